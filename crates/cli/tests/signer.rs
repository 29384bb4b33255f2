//! `vigil signer list` as a holder runs it: with nothing connected, and with the real Ledger
//! Bitcoin app in the Speculos emulator (under its harness, which sets `LEDGER_SPECULOS_APDU`;
//! that test is skipped without it, unless `VIGIL_REQUIRE_LEDGER=1`).

use std::process::Command;

fn vigil(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty() || out.status.success(), "{stderr}");
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn with_no_device_it_says_what_to_do() {
    // No Ledger on this machine's USB (a machine that cannot list USB devices says that).
    let (ok, out) = vigil(&["signer", "list"]);
    assert!(ok);
    if out.starts_with("USB: cannot be used: USB devices cannot be listed") {
        eprintln!("{out}");
    } else {
        assert_eq!(
            out.trim(),
            "No hardware signer found. Connect your device with its cable, unlock it with its PIN and open the \"Bitcoin Test\" app."
        );
        let (ok, out) = vigil(&["signer", "list", "--json", "--network", "bitcoin"]);
        assert!(ok);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), serde_json::json!([]));
    }
    // An emulator asked for where nothing listens is said, not silently dropped.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (ok, out) = vigil(&["signer", "list", "--emulator", &closed]);
    assert!(ok);
    assert!(
        out.starts_with(&format!("Ledger emulator at {closed}: cannot be used: nothing answers at {closed}")),
        "{out}"
    );
}

#[test]
fn the_emulated_ledger_is_named_with_its_app_and_fingerprint() {
    let addr = match std::env::var("LEDGER_SPECULOS_APDU") {
        Ok(addr) => addr,
        Err(_) if std::env::var("VIGIL_REQUIRE_LEDGER").as_deref() == Ok("1") => {
            panic!("VIGIL_REQUIRE_LEDGER=1 but no emulated Ledger (LEDGER_SPECULOS_APDU is not set)")
        }
        Err(_) => return eprintln!("skipped: no emulated Ledger"),
    };
    let (ok, out) = vigil(&["signer", "list", "--json", "--emulator", &addr]);
    assert!(ok, "{out}");
    let found: serde_json::Value = serde_json::from_str(&out).unwrap();
    let device = &found.as_array().unwrap()[..];
    assert_eq!(device.len(), 1, "{out}");
    assert_eq!(device[0]["kind"], "ledger");
    assert_eq!(device[0]["state"], "ready");
    assert_eq!(device[0]["app"], "Bitcoin Test");
    assert_eq!(device[0]["version"], "2.4.6");
    let fingerprint = device[0]["fingerprint"].as_str().unwrap();
    assert_eq!(fingerprint.len(), 8);

    let (_, out) = vigil(&["signer", "list", "--emulator", &addr]);
    assert_eq!(
        out.trim(),
        format!("Ledger emulator at {addr}: ready: Bitcoin Test app 2.4.6, key fingerprint {fingerprint}")
    );
    // A mainnet wallet: the device has the test network's app open, and is told which to open.
    let (_, out) = vigil(&["signer", "list", "--network", "bitcoin", "--emulator", &addr]);
    assert_eq!(
        out.trim(),
        format!(
            "Ledger emulator at {addr}: the \"Bitcoin Test\" app (2.4.6) is open, but this wallet needs the \"Bitcoin\" app: open that one"
        )
    );
}
