from conftest import SIGN_HOST, Stack
import aiohttp


async def test_get_through_cloudfront_verifies(stack: Stack, client: aiohttp.ClientSession) -> None:
    async with client.get(stack.url / "prod" / "items", params={"limit": "10"}) as resp:
        assert resp.status == 200, await resp.text()
        seen = await resp.json()
    assert seen["raw_path"] == "/prod/items"
    assert seen["params"] == [["limit", "10"]]
    assert dict((n.lower(), v) for n, v in seen["headers"])["host"] == SIGN_HOST
