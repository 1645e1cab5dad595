//! The command line: `check-config` accepts the default and names the bad field and line of a broken file.

use std::process::Command;

fn check(text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!(
        "sluice-check-{}-{}",
        std::process::id(),
        text.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sluice.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_config_checks() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check-config", "config/sluice.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_typo_is_named_with_its_line() {
    let (ok, err) = check(
        "[server]\nlisten = \"127.0.0.1:8080\"\nmax_body_byte = 5\n\n[providers.mock]\nkind = \"mock\"\n\n[models.m]\nprovider = \"mock\"\n",
    );
    assert!(!ok);
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("max_body_byte"), "{err}");
}

#[test]
fn a_missing_key_variable_is_reported() {
    let (ok, err) = check(
        "[providers.o]\nkind = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\napi_key_env = \"SLUICE_TEST_SURELY_UNSET\"\n\n[models.m]\nprovider = \"o\"\n",
    );
    assert!(!ok);
    assert!(err.contains("SLUICE_TEST_SURELY_UNSET"), "{err}");
}
