//! The command line, run as a user would.

use std::process::Command;

fn vigil(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil")).args(args).current_dir(dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn policy_check_prints_descriptors_with_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.toml");
    let (code, out, err) = vigil(&["policy", "check", example], dir.path());
    assert_eq!(code, 0, "{err}");
    for line in ["intake      tr(", "recovery    tr(", "deep vault  tr(", "older(144)", "smallest vault"] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    assert!(out.lines().filter(|l| l.contains("tr(") && l.contains('#')).count() >= 3);
}

#[test]
fn a_format_2_policy_lists_the_wallet_policies_a_hardware_signer_registers() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text, err) = vigil(&["policy", "example", "--format", "2"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("\nformat = 2\n"), "{text}");
    std::fs::write(dir.path().join("policy.toml"), &text).unwrap();
    let (code, out, err) = vigil(&["policy", "check", "policy.toml"], dir.path());
    assert!(code == 0 && out.contains("format 2"), "{out}{err}");

    let (code, out, err) = vigil(&["policy", "wallets", "policy.toml"], dir.path());
    assert_eq!(code, 0, "{err}");
    for line in
        ["Vigil intake\n  tr(@0/**,", "Vigil guarded vault (registered per vault", "  @0 tpub", "dummy key"]
    {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    let (code, out, err) = vigil(&["policy", "wallets", "policy.toml", "--json"], dir.path());
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let per_vault: Vec<(&str, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["name"].as_str().unwrap(), w["per_vault"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        per_vault,
        [
            ("Vigil intake", false),
            ("Vigil vault", true),
            ("Vigil guarded vault", true),
            ("Vigil recovery", false),
            ("Vigil deep vault", false)
        ]
    );

    // A format 1 policy has none, and says how to get them.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.toml");
    let (code, out, err) = vigil(&["policy", "wallets", example], dir.path());
    assert!(code == 2 && out.is_empty() && err.contains("format = 2"), "{out}{err}");
}

#[test]
fn bad_policies_exit_non_zero_name_the_field_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.toml")).unwrap();
    let cases = [
        ("malformed", "[owner\nthreshold = ".to_string(), "policy file"),
        (
            "unknown key",
            good.replacen("[f51af535/48h/1h/0h/2h]tpub", "[f51af535/48h/1h/0h/2h]zpub", 1),
            "owner.keys[0]",
        ),
        ("m > n", good.replace("threshold = 2", "threshold = 5"), "guardians.threshold"),
        ("delay 0", good.replace("unvault = 144", "unvault = 0"), "delays.unvault"),
        ("delay too long", good.replace("unvault = 144", "unvault = 70000"), "delays.unvault"),
        ("long < delay", good.replace("deep_vault = 8640", "deep_vault = 10"), "delays.deep_vault"),
        ("dust", good.replace("hot_limit_sat = 2_000_000", "hot_limit_sat = 100"), "allowance.hot_limit_sat"),
        (
            "wrong network",
            good.replace("whitelist = []", "whitelist = [\"tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx\"]"),
            "allowance.whitelist[0]",
        ),
    ];
    for (name, text, field) in cases {
        let file = dir.path().join(format!("{}.toml", name.replace(' ', "_")));
        std::fs::write(&file, &text).unwrap();
        let before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).collect();
        let (code, out, err) = vigil(&["policy", "check", file.to_str().unwrap()], dir.path());
        assert_eq!(code, 2, "{name}: {err}");
        assert!(out.is_empty(), "{name}: printed {out}");
        assert!(err.starts_with("error: "), "{name}: {err}");
        assert!(err.contains(field), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        let after: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(before.len(), after.len(), "{name}: wrote a file");
    }
}

#[test]
fn the_demo_runs_to_the_end_on_a_kept_chain() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let (code, out, err) = vigil(&["demo", "--datadir", "chain"], dir.path());
        assert_eq!(code, 0, "{out}\n{err}");
        for step in [
            "1. unvault -> cancel",
            "2. unvault -> delayed spend",
            "refused, non-BIP68-final",
            "= U + DELAY",
            "3. emergency -> deep vault",
            "done",
        ] {
            assert!(out.contains(step), "missing {step:?} in\n{out}");
        }
    }
}
