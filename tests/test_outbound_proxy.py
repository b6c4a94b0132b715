"""Which outbound proxy the environment names for an upstream (proxy/outbound_proxy.py): the rules of
Go's http.ProxyFromEnvironment (golang.org/x/net/http/httpproxy), table by table."""

from __future__ import annotations

import base64

import pytest

from proxy.outbound_proxy import NoProxy, OutboundProxies, OutboundProxy, ProxySettingError, parse_proxy_url

NO_PROXY: list[tuple[str, str, int, bool]] = [
    # NO_PROXY, upstream host (ASCII form, no brackets), port, goes direct
    ("", "example.com", 443, False),
    ("*", "example.com", 443, True),
    ("foo.com, *", "example.com", 443, True),
    # A domain name matches itself and its subdomains, not names that merely end the same.
    ("example.com", "example.com", 443, True),
    ("example.com", "api.example.com", 443, True),
    ("example.com", "a.b.example.com", 443, True),
    ("example.com", "notexample.com", 443, False),
    ("example.com", "example.com.evil", 443, False),
    # A leading "." or "*." (Go's rule; curl differs): the subdomains only.
    (".example.com", "api.example.com", 443, True),
    (".example.com", "example.com", 443, False),
    ("*.example.com", "api.example.com", 443, True),
    ("*.example.com", "example.com", 443, False),
    # Case, spaces and empty entries.
    ("EXAMPLE.Com", "example.com", 443, True),
    (" foo.com ,, example.com ", "api.example.com", 443, True),
    ("foo.com,bar.com", "example.com", 443, False),
    # A port narrows an entry to that port.
    ("example.com:8443", "example.com", 8443, True),
    ("example.com:8443", "example.com", 443, False),
    (".example.com:443", "api.example.com", 443, True),
    # IP addresses, with or without port, IPv4 and IPv6.
    ("192.0.2.1", "192.0.2.1", 443, True),
    ("192.0.2.1", "192.0.2.2", 443, False),
    ("192.0.2.1:80", "192.0.2.1", 80, True),
    ("192.0.2.1:80", "192.0.2.1", 443, False),
    ("2001:db8::1", "2001:db8::1", 443, True),
    ("[2001:db8::1]:443", "2001:db8::1", 443, True),
    ("[2001:db8::1]:80", "2001:db8::1", 443, False),
    # CIDR ranges match IP hosts, never names.
    ("10.0.0.0/8", "10.1.2.3", 443, True),
    ("10.0.0.0/8", "11.0.0.1", 443, False),
    ("10.1.2.3/8", "10.200.0.1", 443, True),  # host bits set: the range is 10.0.0.0/8
    ("10.0.0.0/8", "ten.example", 443, False),
    ("2001:db8::/32", "2001:db8:ffff::1", 443, True),
    ("2001:db8::/32", "10.0.0.1", 443, False),
    # Internationalised names are compared in their IDNA form.
    ("bücher.example", "xn--bcher-kva.example", 443, True),
    ("bücher.example", "shop.xn--bcher-kva.example", 443, True),
    # Malformed entries are skipped, the others still count.
    ("10.0.0.0/99, example.com", "10.0.0.1", 443, False),
    ("10.0.0.0/99, example.com", "example.com", 443, True),
    (":443", "example.com", 443, False),
    # Loopback never goes through a proxy, whatever NO_PROXY says (Go does the same).
    ("", "localhost", 8080, True),
    ("", "127.0.0.1", 8080, True),
    ("", "127.8.9.10", 8080, True),
    ("", "::1", 8080, True),
    ("", "::ffff:127.0.0.1", 8080, True),
    ("", "localhost.example.com", 8080, False),
    ("", "128.0.0.1", 8080, False),
]


@pytest.mark.parametrize(("no_proxy", "host", "port", "direct"), NO_PROXY)
def test_no_proxy_rules(no_proxy: str, host: str, port: int, direct: bool) -> None:
    assert NoProxy.parse(no_proxy).bypasses(host, port) is direct


PROXY = OutboundProxy("proxy.corp", 3128)

CHOICE: list[tuple[str, dict[str, str], bool, str | None]] = [
    # name, environment, https upstream, proxy chosen (host:port)
    ("https uses HTTPS_PROXY", {"HTTPS_PROXY": "http://s:1", "HTTP_PROXY": "http://h:2"}, True, "s:1"),
    ("http uses HTTP_PROXY", {"HTTPS_PROXY": "http://s:1", "HTTP_PROXY": "http://h:2"}, False, "h:2"),
    ("lower case", {"https_proxy": "http://s:1", "http_proxy": "http://h:2"}, True, "s:1"),
    ("upper case wins", {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"}, True, "upper:1"),
    ("an empty upper case one does not", {"HTTPS_PROXY": "", "https_proxy": "http://lower:2"}, True, "lower:2"),
    ("no fallback from https to HTTP_PROXY", {"HTTP_PROXY": "http://h:2"}, True, None),
    ("no fallback from http to HTTPS_PROXY", {"HTTPS_PROXY": "http://s:1"}, False, None),
    ("ALL_PROXY is not read", {"ALL_PROXY": "http://a:3", "all_proxy": "http://a:3"}, True, None),
    ("NO_PROXY", {"HTTPS_PROXY": "http://s:1", "NO_PROXY": "example.com"}, True, None),
    ("no_proxy", {"HTTPS_PROXY": "http://s:1", "no_proxy": "example.com"}, True, None),
    ("NO_PROXY wins over no_proxy", {"HTTPS_PROXY": "http://s:1", "NO_PROXY": "other.com", "no_proxy": "example.com"},
     True, "s:1"),
    ("NO_PROXY for another host", {"HTTPS_PROXY": "http://s:1", "NO_PROXY": "other.com"}, True, "s:1"),
]


@pytest.mark.parametrize(("environ", "secure", "chosen"), [c[1:] for c in CHOICE], ids=[c[0] for c in CHOICE])
def test_which_variable_is_used(environ: dict[str, str], secure: bool, chosen: str | None) -> None:
    via = OutboundProxies.from_environ(environ).for_upstream(secure, "api.example.com", 443 if secure else 80)
    assert (via.address if via else None) == chosen


def test_loopback_upstreams_go_direct_even_with_a_proxy_set() -> None:
    proxies = OutboundProxies.from_environ({"HTTPS_PROXY": "http://s:1", "HTTP_PROXY": "http://h:2"})
    for host in ("localhost", "127.0.0.1", "::1"):
        assert proxies.for_upstream(True, host, 443) is None and proxies.for_upstream(False, host, 80) is None
    assert proxies.for_upstream(True, "d111111abcdef8.cloudfront.net", 443) == OutboundProxy("s", 1)


def basic(user_password: str) -> str:
    return "Basic " + base64.b64encode(user_password.encode()).decode()


URLS: list[tuple[str, OutboundProxy]] = [
    ("http://proxy.corp:3128", PROXY),
    ("http://proxy.corp:3128/", PROXY),
    ("proxy.corp:3128", PROXY),  # no scheme: http://
    ("HTTP://Proxy.Corp:3128", PROXY),
    ("http://proxy.corp", OutboundProxy("proxy.corp", 80)),  # Go's default port for http://
    ("proxy.corp", OutboundProxy("proxy.corp", 80)),
    ("10.0.0.1:8080", OutboundProxy("10.0.0.1", 8080)),
    ("http://[2001:db8::1]:3128", OutboundProxy("2001:db8::1", 3128)),
    ("  http://proxy.corp:3128  ", PROXY),
    # Credentials, percent-decoded, become a Basic Proxy-Authorization value.
    ("http://alice:s3cret@proxy.corp:3128", OutboundProxy("proxy.corp", 3128, basic("alice:s3cret"))),
    ("http://DOMAIN%5Calice:p%40ss%3Aw0rd@proxy.corp:3128", OutboundProxy("proxy.corp", 3128, basic("DOMAIN\\alice:p@ss:w0rd"))),
    ("http://alice@proxy.corp:3128", OutboundProxy("proxy.corp", 3128, basic("alice:"))),
    ("alice:s3cret@proxy.corp:3128", OutboundProxy("proxy.corp", 3128, basic("alice:s3cret"))),
]


@pytest.mark.parametrize(("value", "expected"), URLS)
def test_proxy_urls(value: str, expected: OutboundProxy) -> None:
    parsed = parse_proxy_url(value, "HTTPS_PROXY")
    assert (parsed, parsed.authorization) == (expected, expected.authorization)


BAD_URLS: list[tuple[str, str]] = [
    ("https://alice:s3cret@proxy.corp:3128", "HTTPS_PROXY: https:// proxies are not supported, only http:// ones"),
    ("socks5://alice:s3cret@proxy.corp:1080", "HTTPS_PROXY: socks5:// proxies are not supported"),
    ("socks5h://proxy.corp:1080", "HTTPS_PROXY: socks5h:// proxies are not supported"),
    ("http://alice:s3cret@proxy.corp:notaport", "HTTPS_PROXY is not a proxy URL"),
    ("http://alice:s3cret@proxy.corp:70000", "HTTPS_PROXY is not a proxy URL"),
    ("http://alice:s3cret@proxy.corp:0", "HTTPS_PROXY: port 0 of proxy proxy.corp is not a TCP port"),
    ("http://alice:s3cret@:3128", "HTTPS_PROXY"),
    ("http://", "HTTPS_PROXY"),
]


@pytest.mark.parametrize(("value", "message"), BAD_URLS)
def test_unusable_proxy_urls_say_why_in_one_line_without_credentials(value: str, message: str) -> None:
    with pytest.raises(ProxySettingError) as raised:
        OutboundProxies.from_environ({"HTTPS_PROXY": value})
    text = str(raised.value)
    assert text.startswith(message) and "\n" not in text
    assert "s3cret" not in text and "alice" not in text


def test_a_proxy_never_shows_its_credentials() -> None:
    via = parse_proxy_url("http://alice:s3cret@proxy.corp:3128", "HTTPS_PROXY")
    assert str(via) == "proxy.corp:3128" and f"{via}" == "proxy.corp:3128"
    assert "s3cret" not in repr(via) and base64.b64encode(b"alice:s3cret").decode() not in repr(via)
    assert str(OutboundProxy("2001:db8::1", 3128)) == "[2001:db8::1]:3128"
