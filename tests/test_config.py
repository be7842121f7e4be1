"""Settings: flags over environment over config.toml over defaults, and where each came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfetch.config import ConfigError, Overrides, load_config, mask_token
from modelfetch.core.errors import ProxyConfigError
from modelfetch.core.spec import DEFAULT_ENDPOINT

TOKEN = "hf_abcdefghijklmnopqrstuvwxyz0123"


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment that reads nothing of the real user's (no token file, no config)."""
    env = {
        "HOME": str(tmp_path / "user"),
        "XDG_CONFIG_HOME": str(tmp_path / "user" / ".config"),
        "XDG_CACHE_HOME": str(tmp_path / "user" / ".cache"),
        "MODELFETCH_HOME": str(tmp_path / "home"),
    }
    env.update(extra)
    return env


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(environ=base_env(tmp_path))
    assert cfg.home == tmp_path / "home"
    assert cfg.models_dir == tmp_path / "home" / "models"
    assert (cfg.max_active, cfg.layout, cfg.hf_endpoint) == (3, "plain", DEFAULT_ENDPOINT)
    assert cfg.hf_token is None
    assert cfg.config_file == tmp_path / "home" / "config.toml"
    assert not cfg.config_file_found
    assert cfg.sources == {"home": "MODELFETCH_HOME"}


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    toml = write_toml(
        tmp_path / "home" / "config.toml",
        'models_dir = "/from/file"\nmax_active = 5\nlayout = "hf-cache"\n'
        'hf_endpoint = "http://file.example"\nstall_timeout = 12.5\n',
    )
    env = base_env(tmp_path, MODELFETCH_MAX_ACTIVE="7", MODELFETCH_MODELS_DIR="/from/env")

    cfg = load_config(environ=env)
    assert cfg.config_file_found
    assert cfg.max_active == 7 and cfg.sources["max_active"] == "MODELFETCH_MAX_ACTIVE"
    assert cfg.models_dir == Path("/from/env")
    assert cfg.layout == "hf-cache" and cfg.sources["layout"] == str(toml)
    assert cfg.hf_endpoint == "http://file.example" and cfg.sources["hf_endpoint"] == str(toml)
    assert cfg.stall_timeout == 12.5

    flags = Overrides(models_dir=tmp_path / "flag", max_active=2, layout="plain")
    cfg = load_config(flags, environ={**env, "HF_ENDPOINT": "http://env.example/"})
    assert (cfg.models_dir, cfg.max_active, cfg.layout) == (tmp_path / "flag", 2, "plain")
    assert cfg.sources["models_dir"] == "--dir" and cfg.sources["max_active"] == "--jobs"
    assert cfg.hf_endpoint == "http://env.example" and cfg.sources["hf_endpoint"] == "HF_ENDPOINT"


def test_home_flag_picks_its_own_config_file(tmp_path: Path) -> None:
    write_toml(tmp_path / "other" / "config.toml", "max_active = 4\n")
    cfg = load_config(Overrides(home=tmp_path / "other"), environ=base_env(tmp_path))
    assert cfg.home == tmp_path / "other" and cfg.sources["home"] == "--home"
    assert cfg.max_active == 4


def test_user_config_file_may_set_home(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    del env["MODELFETCH_HOME"]
    user_file = write_toml(
        tmp_path / "user" / ".config" / "modelfetch" / "config.toml", 'home = "/srv/mf"\n'
    )
    cfg = load_config(environ=env)
    assert cfg.config_file == user_file
    assert cfg.home == Path("/srv/mf") and cfg.models_dir == Path("/srv/mf/models")


def test_token_from_environment_wins_over_file_and_is_masked(tmp_path: Path) -> None:
    write_toml(tmp_path / "home" / "config.toml", 'hf_token = "hf_from_the_config_file_000"\n')
    cfg = load_config(environ=base_env(tmp_path, HF_TOKEN=TOKEN))
    assert cfg.hf_token is not None and cfg.hf_token.get_secret_value() == TOKEN
    assert cfg.sources["hf_token"] == "HF_TOKEN"
    shown = {name: (value, source) for name, value, source in cfg.describe()}
    assert shown["hf_token"] == ("hf_…0123", "HF_TOKEN")
    assert TOKEN not in repr(cfg) and TOKEN not in str(cfg.describe())
    assert cfg.hub_config().token == TOKEN

    cfg = load_config(environ=base_env(tmp_path))
    assert cfg.hf_token is not None
    assert cfg.hf_token.get_secret_value() == "hf_from_the_config_file_000"


def test_token_file_huggingface_hub_reads(tmp_path: Path) -> None:
    token_file = tmp_path / "hf" / "token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")
    cfg = load_config(environ=base_env(tmp_path, HF_HOME=str(tmp_path / "hf")))
    assert cfg.hf_token is not None and cfg.hf_token.get_secret_value() == TOKEN
    assert cfg.sources["hf_token"].startswith("$HF_HOME/token")


def test_manager_kwargs(tmp_path: Path) -> None:
    cfg = load_config(Overrides(max_active=4), environ=base_env(tmp_path, HF_TOKEN=TOKEN))
    kwargs = cfg.manager_kwargs(workers=False)
    assert kwargs["home"] == tmp_path / "home"
    assert kwargs["models_dir"] == tmp_path / "home" / "models"
    assert kwargs["settings"].max_active == 4
    assert kwargs["settings"].stall_timeout == 30.0
    assert kwargs["hub"].endpoint == DEFAULT_ENDPOINT and kwargs["hub"].token == TOKEN
    assert kwargs["workers"] is False


@pytest.mark.parametrize(
    ("env", "toml", "flags", "message"),
    [
        ({"MODELFETCH_MAX_ACTIVE": "lots"}, None, None, "MODELFETCH_MAX_ACTIVE must be a whole"),
        ({"MODELFETCH_MAX_ACTIVE": "0"}, None, None, "at least 1"),
        ({"MODELFETCH_LAYOUT": "flat"}, None, None, "unknown layout 'flat'"),
        ({"HF_ENDPOINT": "ftp://x"}, None, None, "HF_ENDPOINT"),
        ({}, "max_actve = 3\n", None, "max_actve: unknown setting"),
        ({}, "max_active = 0\n", None, "max_active"),
        ({}, "max_active = [\n", None, "not valid TOML"),
        ({}, 'hf_endpoint = "nope"\n', None, "must be an http(s) URL"),
        ({}, None, Overrides(layout="tree"), "--layout: unknown layout"),
        ({}, None, Overrides(max_active=0), "--jobs must be at least 1"),
    ],
)
def test_unusable_settings_are_one_clear_line(
    tmp_path: Path,
    env: dict[str, str],
    toml: str | None,
    flags: Overrides | None,
    message: str,
) -> None:
    if toml is not None:
        write_toml(tmp_path / "home" / "config.toml", toml)
    with pytest.raises(ConfigError) as info:
        load_config(flags, environ=base_env(tmp_path, **env))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_mask_token() -> None:
    assert mask_token(None) == "(none)"
    assert mask_token("short") == "***"
    assert mask_token("hf_0123456789abcdef") == "hf_…cdef"
    assert mask_token("plain-token-without-prefix") == "…efix"


def test_proxy_flag_beats_file_beats_environment(tmp_path: Path) -> None:
    env = base_env(tmp_path, HTTPS_PROXY="http://env.lan:3128", NO_PROXY="intra.lan")
    cfg = load_config(environ=env)
    assert cfg.network.proxies.proxy_for("https://hf.co/x") is not None
    assert cfg.network.proxies.proxy_for("https://a.intra.lan/") is None
    assert cfg.sources["proxy"] == "HTTPS_PROXY"
    write_toml(tmp_path / "home" / "config.toml", 'proxy = "http://file.lan:8080"\n')
    cfg = load_config(environ=env)
    chosen = cfg.network.proxies.proxy_for("https://hf.co/x")
    assert chosen is not None and (chosen.host, chosen.port) == ("file.lan", 8080)
    assert cfg.network.proxies.proxy_for("https://a.intra.lan/") is None  # NO_PROXY still holds
    cfg = load_config(Overrides(proxy="http://u:secret@flag.lan:1"), environ=env)
    chosen = cfg.network.proxies.proxy_for("http://hf.co/x")
    assert chosen is not None and chosen.host == "flag.lan"
    assert cfg.sources["proxy"] == "--proxy"
    shown = dict((name, value) for name, value, _ in cfg.describe())["proxy"]
    assert "flag.lan" in shown and "secret" not in shown
    assert load_config(Overrides(proxy=""), environ=env).network.proxies.active is False


def test_an_unusable_proxy_or_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="socks5 proxies are not supported"):
        load_config(Overrides(proxy="socks5://p:1080"), environ=base_env(tmp_path))
    # From the environment (shared with other tools) it is kept as unusable instead: only what
    # would connect out refuses it.
    kept = load_config(environ=base_env(tmp_path, ALL_PROXY="socks5://p:1080")).network
    assert kept.error is not None and "socks5 proxies are not supported" in kept.error
    with pytest.raises(ProxyConfigError, match="socks5 proxies are not supported"):
        kept.usable()
    with pytest.raises(ConfigError, match=r"--ca-bundle: the CA bundle .* is not a readable file"):
        load_config(Overrides(ca_bundle=tmp_path / "missing.pem"), environ=base_env(tmp_path))


def test_ca_bundle_order(tmp_path: Path) -> None:
    pems = {
        name: write_toml(tmp_path / f"{name}.pem", "pem") for name in ("flag", "file", "r", "s")
    }
    env = base_env(tmp_path, REQUESTS_CA_BUNDLE=str(pems["r"]), SSL_CERT_FILE=str(pems["s"]))
    assert load_config(environ=env).network.ca_bundle == str(pems["r"])
    only_ssl = base_env(tmp_path, SSL_CERT_FILE=str(pems["s"]))
    assert load_config(environ=only_ssl).network.ca_bundle == str(pems["s"])
    write_toml(tmp_path / "home" / "config.toml", f'ca_bundle = "{pems["file"]}"\n')
    assert load_config(environ=env).network.ca_bundle == str(pems["file"])
    cfg = load_config(Overrides(ca_bundle=pems["flag"]), environ=env)
    assert (cfg.network.ca_bundle, cfg.sources["ca_bundle"]) == (str(pems["flag"]), "--ca-bundle")
    assert load_config(environ=base_env(tmp_path)).network.ca_bundle is not None  # the file's
