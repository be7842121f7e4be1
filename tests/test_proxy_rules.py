"""The *_PROXY / NO_PROXY rules (core/proxy.py): precedence, bypass forms, refusals."""

from __future__ import annotations

import pytest

from modelfetch.core.errors import ProxyConfigError
from modelfetch.core.proxy import Proxy, ProxyRules, parse_proxy


def via(env: dict[str, str], url: str, override: str | None = None) -> str | None:
    proxy = ProxyRules.from_env(env, override).proxy_for(url)
    return None if proxy is None else f"{proxy.host}:{proxy.port}"


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({}, "https://hf.co/x", None),
        ({"HTTPS_PROXY": "p1:3128"}, "https://hf.co/x", "p1:3128"),
        ({"HTTPS_PROXY": "p1:3128"}, "http://hf.co/x", None),
        ({"https_proxy": "lower:1", "HTTPS_PROXY": "upper:2"}, "https://a/", "lower:1"),
        ({"HTTPS_PROXY": "https:1", "ALL_PROXY": "all:2"}, "https://a/", "https:1"),
        ({"ALL_PROXY": "all:2"}, "https://a/", "all:2"),
        ({"all_proxy": "lall:3", "ALL_PROXY": "all:2"}, "http://a/", "lall:3"),
        ({"http_proxy": "h:1", "all_proxy": "all:2"}, "http://a/", "h:1"),
        ({"HTTP_PROXY": "H:1"}, "http://a/", "h:1"),  # names are case-insensitive
        ({"https_proxy": "", "HTTPS_PROXY": "upper:2"}, "https://a/", "upper:2"),  # empty = unset
        ({"HTTPS_PROXY": "http://p"}, "https://a/", "p:80"),
        ({"HTTPS_PROXY": "p:1"}, "ftp://a/", None),
    ],
)
def test_which_variable_wins(env: dict[str, str], url: str, expected: str | None) -> None:
    assert via(env, url) == expected


@pytest.mark.parametrize(
    ("no_proxy", "url", "bypassed"),
    [
        ("*", "https://hf.co/", True),
        ("hf.co", "https://hf.co/", True),
        ("hf.co", "https://cdn.hf.co/", True),
        (".hf.co", "https://hf.co/", True),
        (".hf.co", "https://cas.cdn.hf.co/", True),
        ("hf.co", "https://nothf.co/", False),
        ("*.hf.co", "https://a.hf.co/", True),
        ("HF.CO", "https://hf.co/", True),
        ("10.0.0.0/8", "https://10.2.3.4/", True),
        ("10.0.0.0/8", "https://11.2.3.4/", False),
        ("10.0.0.0/8", "https://ten.example/", False),
        ("192.168.1.5", "http://192.168.1.5:8080/", True),
        ("fd00::/8", "https://[fd12::1]/", True),
        ("[::1]", "https://[::1]:8443/", True),
        ("[::1]:9", "https://[::1]:8443/", False),
        ("hf.co:443", "https://hf.co/", True),
        ("hf.co:443", "http://hf.co/", False),
        ("a.com, hf.co ,b.com", "https://hf.co/", True),
        ("a.com hf.co", "https://hf.co/", True),
        ("", "https://hf.co/", False),
    ],
)
def test_no_proxy_forms(no_proxy: str, url: str, bypassed: bool) -> None:
    env = {"HTTPS_PROXY": "p:1", "HTTP_PROXY": "p:1", "NO_PROXY": no_proxy}
    assert (via(env, url) is None) is bypassed


def test_lower_case_no_proxy_wins() -> None:
    env = {"HTTPS_PROXY": "p:1", "no_proxy": "a.com", "NO_PROXY": "hf.co"}
    assert via(env, "https://hf.co/") == "p:1"
    assert via(env, "https://a.com/") is None


def test_override_replaces_the_environment_for_both_schemes_and_no_proxy_still_applies() -> None:
    env = {"HTTPS_PROXY": "env:1", "NO_PROXY": "local.lan"}
    assert via(env, "https://hf.co/", override="flag:2") == "flag:2"
    assert via(env, "http://hf.co/", override="flag:2") == "flag:2"
    assert via(env, "https://x.local.lan/", override="flag:2") is None
    assert via(env, "https://hf.co/", override="") is None  # "" turns proxies off


def test_credentials_are_decoded_and_never_shown() -> None:
    proxy = parse_proxy("http://us%40er:p%3Ass@proxy.lan:3128")
    assert proxy == Proxy("proxy.lan", 3128, "us@er", "p:ss")
    assert proxy.authorization() == "Basic dXNAZXI6cDpzcw=="
    assert proxy.url() == "http://proxy.lan:3128"
    assert "p:ss" not in repr(proxy) and "p%3Ass" not in repr(proxy)
    assert proxy.url(credentials=True) == "http://us%40er:p%3Ass@proxy.lan:3128"
    assert parse_proxy("proxy.lan:3128").authorization() is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("socks5://p:1080", "socks5 proxies are not supported"),
        ("https://p:443", "https proxies are not supported"),
        ("http://:3128", "no host"),
        ("http://p:99999", "cannot parse"),
        ("http://p:3128/path", "scheme://host:port"),
    ],
)
def test_unusable_proxy_urls_are_refused_clearly(text: str, words: str) -> None:
    with pytest.raises(ProxyConfigError, match=words):
        ProxyRules.from_env({"HTTPS_PROXY": text})


def test_a_refusal_names_the_variable_and_hides_the_password() -> None:
    with pytest.raises(ProxyConfigError) as caught:
        ProxyRules.from_env({"ALL_PROXY": "socks5://me:secret@p:1080"})
    assert "ALL_PROXY" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert "me:***@p:1080" in str(caught.value)
