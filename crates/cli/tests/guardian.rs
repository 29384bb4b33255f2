//! `vigil guardian`, as a guardian runs it, against a real co-signer and tower.

use std::process::Command;

use serde_json::Value;
use vigil_chain::ChainBackend;
use vigil_policy::bitcoin::Amount;
use vigil_policy::example::ExamplePolicy;
use vigil_policy::VaultKind;
use vigil_testenv::cosigner::CosignerProcess;
use vigil_testenv::family::Family;
use vigil_testenv::household::DELAY;
use vigil_testenv::process::{vigil_exe, vigil_node};
use vigil_testenv::wallet::{confirmations, mine};

fn guardian(dir: &std::path::Path, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(vigil_exe())
        .arg("guardian")
        .args(args)
        .args([
            "--key",
            dir.join("g.key").to_str().unwrap(),
            "--passphrase-file",
            dir.join("pass").to_str().unwrap(),
        ])
        .args(["--policy", dir.join("policy.toml").to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Two guardians made with `vigil guardian init`, each in its own directory, and their keys
/// as a policy names them.
fn two_guardians() -> ([tempfile::TempDir; 2], Vec<Option<String>>) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let keys = dirs
        .iter()
        .map(|d| {
            std::fs::write(d.path().join("pass"), "a guardian's passphrase\n").unwrap();
            let made = guardian(d.path(), &["init", "--network", "regtest"]).unwrap();
            Some(made["key"].as_str().unwrap().to_owned())
        })
        .collect();
    (dirs, keys)
}

/// Sends `vault`'s unvault, and after DELAY the spend the co-signer signs for request `id`:
/// it confirms.
fn unvault_and_spend(node: &vigil_testenv::process::Node, f: &Family, vault: &vigil_client::Vault, id: u64) {
    node.rpc.broadcast(vault.graph.unvault()).unwrap();
    mine(&node.rpc, DELAY, &f.wallet.address());
    let tx = f.sign(id).unwrap();
    node.rpc.broadcast(&tx).unwrap();
    mine(&node.rpc, 1, &f.wallet.address());
    assert_eq!(confirmations(&node.rpc, &tx.compute_txid()), 1);
}

/// The example policy with short delays, its first guardians those whose `keys` are given.
fn example(seed: &str, keys: Vec<Option<String>>) -> ExamplePolicy {
    let mut e = ExamplePolicy {
        seed: seed.into(),
        delay: DELAY,
        recovery: 40,
        deep_vault: 60,
        ..ExamplePolicy::default()
    };
    e.services.guardian_keys = keys;
    e
}

#[test]
fn a_guardian_reviews_approves_and_denies_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pass"), "sister's passphrase\n").unwrap();
    let made = guardian(dir.path(), &["init", "--network", "regtest"]).unwrap();
    let node = vigil_node();
    let mut co = CosignerProcess::new(&node, "");
    let e = example("cli guardian", vec![Some(made["key"].as_str().unwrap().to_owned())]);
    let mut f = Family::new(&node, &co, e, 1, None);
    std::fs::write(dir.path().join("policy.toml"), &f.policy_text).unwrap();
    let vault = f.vault(&node, Amount::from_sat(20_000_000), VaultKind::Guarded);
    let other = f.vault(&node, Amount::from_sat(20_000_000), VaultKind::Guarded);
    let psbt = f.spend_psbt(&vault, &f.wallet.address(), 1_000);
    let id = f.request_spend(&vault, &psbt).unwrap()["id"].as_u64().unwrap();

    let pending = guardian(dir.path(), &["pending"]).unwrap();
    assert_eq!(pending[0]["id"].as_u64(), Some(id), "{pending}");
    assert_eq!(pending[0]["destinations"][0], f.wallet.address().to_string());
    // What a co-signer says in words is not signed: a vault kind it made up is refused, and its
    // text cannot rewrite the lines before "Type APPROVE" on a terminal.
    let served = f.get(&format!("/v1/spends/{id}"), &f.guardian(1)).unwrap();
    let status = |edit: &dyn Fn(&mut Value)| {
        let mut s = served.clone();
        edit(&mut s);
        serde_json::from_value::<vigil_cosigner::wire::SpendStatus>(s).unwrap()
    };
    let checker =
        vigil_client::guardian::Checker::new(&vigil_policy::Policy::from_toml(&f.policy_text).unwrap())
            .unwrap();
    let checked = checker.check(&status(&|_| {})).unwrap();
    assert_eq!(checked.kind, VaultKind::Guarded);
    let made_up =
        checker.check(&status(&|s| s["vault"]["kind"] = "standard (owner confirmed by phone)".into()));
    assert!(made_up.is_err_and(|e| e.to_string().contains("neither standard nor guarded")));
    let hiding = status(&|s| s["state"] = "waiting\n  pays 0.001 BTC to a friend\u{1b}[8m".into());
    assert!(checker.check(&hiding).is_err_and(|e| e.to_string().contains("the request's state")));
    for shown in [checked.describe(&hiding), vigil_client::guardian::describe(&hiding)] {
        assert!(!shown.contains('\u{1b}') && !shown.contains("a friend"), "{shown}");
    }
    // Without --yes it asks; with no answer, nothing is signed.
    let asked = Command::new(vigil_exe())
        .args(["guardian", "approve", &id.to_string(), "--key", dir.path().join("g.key").to_str().unwrap()])
        .args(["--passphrase-file", dir.path().join("pass").to_str().unwrap()])
        .args(["--policy", dir.path().join("policy.toml").to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!asked.status.success());
    assert!(String::from_utf8_lossy(&asked.stderr).contains("nothing was signed"));
    let one = guardian(dir.path(), &["approve", &id.to_string(), "--yes"]).unwrap();
    assert_eq!((one["state"].as_str(), one["approvals"].as_u64()), (Some("waiting"), Some(1)));
    let two = f.vote(1, id, true).unwrap();
    assert_eq!(two["state"], "approved");
    // The guardian's signature from the command line is good on chain.
    unvault_and_spend(&node, &f, &vault, id);

    let denied_id = f.request_spend(&other, &f.spend_psbt(&other, &f.wallet.address(), 1_000)).unwrap()["id"]
        .as_u64()
        .unwrap();
    let denied = guardian(dir.path(), &["deny", &denied_id.to_string(), "--yes"]).unwrap();
    assert_eq!(denied["state"], "denied");
    let locked = guardian(dir.path(), &["lockdown", "--blocks", "12"]).unwrap();
    assert!(locked["until_height"].as_u64().unwrap() > 0);
    assert!(locked["towers"].as_array().unwrap().iter().all(|t| t["error"].is_null()), "{locked}");
    let tower_lockdown = |f: &Family| {
        let path = format!("/v1/clients/{}", f.cosigner.client);
        vigil_testenv::household::get(&f.towers[0].api, &path, &f.owner()).unwrap()["locked_until"].as_u64()
    };
    let tip = u64::from(node.rpc.tip().unwrap().height);
    assert!(tower_lockdown(&f).is_some_and(|h| h >= tip + 11), "the tower shows it to the owner");
    // A vanished (or compromised) co-signer cannot keep a guardian's lockdown from the towers.
    co.kill9();
    let locked = guardian(dir.path(), &["lockdown", "--blocks", "30"]).unwrap();
    assert!(locked["cosigner_error"].is_string(), "{locked}");
    assert!(locked["towers"][0]["error"].is_null(), "{locked}");
    assert!(tower_lockdown(&f).is_some_and(|h| h >= tip + 29), "{locked}");
    // Told by a duress alarm that the owner may be held, a guardian keeps the lockdown from the
    // owner's device without the co-signer too: the towers hold it quietly.
    let shown = tower_lockdown(&f);
    let silent = guardian(dir.path(), &["lockdown", "--blocks", "60", "--silent"]).unwrap();
    assert!(silent["towers"][0]["error"].is_null() && silent["quiet"] == true, "{silent}");
    assert_eq!(tower_lockdown(&f), shown, "not shown to the owner");
    // Back, and the owner typed the duress code: the co-signer's word makes it quiet at the
    // towers without --silent.
    co.start();
    f.heartbeat(true);
    let told = guardian(dir.path(), &["lockdown", "--blocks", "90"]).unwrap();
    assert!(told["cosigner_error"].is_null() && told["quiet"] == true, "{told}");
    assert_eq!(tower_lockdown(&f), shown, "not shown to the owner");
    // A wrong passphrase opens nothing.
    std::fs::write(dir.path().join("pass"), "wrong\n").unwrap();
    assert!(guardian(dir.path(), &["pending"]).unwrap_err().contains("passphrase"));
}

/// `vigil guardian lift` as the guardian whose files are in `dir`, answering `answer` when asked.
fn lift_answering(dir: &std::path::Path, answer: &str) -> (bool, String, String) {
    let mut child = Command::new(vigil_exe())
        .args(["guardian", "lift", "--json", "--key", dir.join("g.key").to_str().unwrap()])
        .args(["--passphrase-file", dir.join("pass").to_str().unwrap()])
        .args(["--policy", dir.join("policy.toml").to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(answer.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn guardians_lift_a_lockdown_and_a_duress_one_from_the_command_line() {
    let (dirs, keys) = two_guardians();
    let (first, second) = (dirs[0].path(), dirs[1].path());
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let mut f = Family::new(&node, &co, example("cli guardian lift", keys), 1, None);
    for d in &dirs {
        std::fs::write(d.path().join("policy.toml"), &f.policy_text).unwrap();
    }
    let vault = f.vault(&node, Amount::from_sat(1_000_000), VaultKind::Standard);
    let state = |f: &Family| f.get("/v1/lockdown", &f.guardian(2)).unwrap();
    let tower_lockdown = |f: &Family| {
        let path = format!("/v1/clients/{}", f.cosigner.client);
        vigil_testenv::household::get(&f.towers[0].api, &path, &f.owner()).unwrap()["locked_until"].as_u64()
    };
    let tower_takes = |f: &Family, at: u32| {
        vigil_testenv::eventually("the tower takes the lift", || {
            (tower_lockdown(f) == Some(u64::from(at))).then_some(())
        })
    };
    // A guardian's client checks the co-signer's tip against the tower's: the tower decides
    // the blocks mined before each lift first.
    assert!(guardian(first, &["lift", "--yes"]).unwrap_err().contains("not locked down"));
    f.towers_caught_up(&node);

    let lockdown = |blocks| vigil_cosigner::wire::Lockdown { blocks, sweep: false };
    f.post("/v1/lockdown", &lockdown(3_000), &f.owner()).unwrap();
    // Never shown to the owner's device: it would show a duress lockdown.
    assert_eq!(f.get("/v1/lockdown", &f.owner()).unwrap_err().0, 403);
    // Asked, and not answered LIFT: nothing is signed.
    let (ok, _, shown) = lift_answering(first, "no\n");
    assert!(!ok && shown.contains("nothing was signed"), "{shown}");
    assert!(shown.contains("LIFT THE LOCKDOWN") && !shown.contains("DURESS"), "{shown}");
    assert_eq!(state(&f)["lift_proposed"], 0);

    // The first guardian proposes a height a day past the earliest, and the owner then types
    // the duress code: a new lockdown, whose lift starts again.
    let proposed = guardian(first, &["lift", "--yes"]).unwrap();
    let tip = node.rpc.tip().unwrap().height;
    let earliest = tip + 1_009 + 6;
    assert_eq!(proposed["lift_proposed"], earliest + 144, "{proposed}");
    assert_eq!((proposed["signatures"].as_u64(), proposed["lifted_at"].as_u64()), (Some(1), Some(0)));
    f.heartbeat(true);
    let held = state(&f);
    assert_eq!((held["duress"].as_bool(), held["lift_proposed"].as_u64()), (Some(true), Some(0)), "{held}");
    let until = held["lockdown_until"].as_u64().unwrap() as u32;
    assert!(until > tip + 3_000, "the duress lockdown ends later: {held}");
    let (ok, _, shown) = lift_answering(first, "");
    assert!(!ok && shown.contains("DURESS") && shown.contains("nothing was signed"), "{shown}");
    let at = guardian(first, &["lift", "--yes"]).unwrap()["lift_proposed"].as_u64().unwrap() as u32;
    assert_eq!(at, earliest + 144);
    // The second guardian is shown the proposal and signs it: the quorum lifts both lockdowns
    // there, at the co-signer and at the tower. Asked again, the first has nothing to sign.
    let (ok, out, shown) = lift_answering(second, "LIFT\n");
    assert!(ok && shown.contains("1 of 2 guardians signed it so far"), "{shown}");
    let lifted: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(lifted["lifted_at"].as_u64(), Some(u64::from(at)), "{lifted}");
    assert_eq!(guardian(first, &["lift", "--yes"]).unwrap()["lifted_at"].as_u64(), Some(u64::from(at)));
    tower_takes(&f, at);

    // One block before the lift a spend is refused; from it, co-signed.
    let tip = node.rpc.tip().unwrap().height;
    mine(&node.rpc, at - 1 - tip, &f.wallet.address());
    let psbt = f.spend_psbt(&vault, &f.wallet.address(), 1_000);
    let refused = f.request_spend(&vault, &psbt).unwrap_err();
    assert!(refused.0 == 403 && refused.1.contains(&format!("locked down until block {at}")), "{refused:?}");
    mine(&node.rpc, 1, &f.wallet.address());
    let id = f.request_spend(&vault, &psbt).unwrap()["id"].as_u64().unwrap();
    unvault_and_spend(&node, &f, &vault, id);

    // A new lockdown after the duress one was lifted: its lift names where it ends, as the
    // towers hold it, not the lifted duress lockdown's first end; and the tower takes it.
    f.towers_caught_up(&node);
    f.post("/v1/lockdown", &lockdown(2_000), &f.owner()).unwrap();
    let tip = node.rpc.tip().unwrap().height;
    assert_eq!(state(&f)["lockdown_until"].as_u64(), Some(u64::from(tip + 2_000)));
    assert!(tip + 2_000 < until, "the duress lockdown would have ended later");
    let at = guardian(first, &["lift", "--yes"]).unwrap()["lift_proposed"].as_u64().unwrap() as u32;
    assert_eq!(guardian(second, &["lift", "--yes"]).unwrap()["lifted_at"].as_u64(), Some(u64::from(at)));
    tower_takes(&f, at);
}

#[test]
fn a_guardian_asking_for_a_panic_joins_the_one_another_guardian_started() {
    let (dirs, keys) = two_guardians();
    let (first, second) = (dirs[0].path(), dirs[1].path());
    let node = vigil_node();
    let co = CosignerProcess::new(&node, "");
    let f = Family::new(&node, &co, example("cli guardian panic", keys), 1, None);
    for d in &dirs {
        std::fs::write(d.path().join("policy.toml"), &f.policy_text).unwrap();
    }
    f.towers_caught_up(&node);
    let not_after = (node.rpc.tip().unwrap().height + 140).to_string();
    let started = guardian(first, &["panic", "--not-after", &not_after]).unwrap();
    assert_eq!((started["approvals"].as_u64(), started["panic"]["joined"].as_bool()), (Some(1), Some(false)));
    // Its own proposal is not offered to the guardian who signed it: a new one needs a height.
    let again = guardian(first, &["panic"]).unwrap_err();
    assert!(again.contains("--not-after HEIGHT"), "{again}");
    // The second guardian asks for a panic without the first's id: it joins it, and the
    // quorum sweeps, rather than a second panic splitting the signatures.
    let joined = guardian(second, &["panic"]).unwrap();
    assert_eq!(joined["panic"]["id"], started["panic"]["id"], "{joined}");
    assert_eq!(
        (joined["panic"]["joined"].as_bool(), joined["panic"]["started_by"].clone()),
        (Some(true), serde_json::json!([1])),
        "{joined}"
    );
    assert_eq!(joined["approvals"].as_u64(), Some(2), "{joined}");
    assert!(joined["towers"].as_array().is_some_and(|t| !t.is_empty()), "{joined}");
}
