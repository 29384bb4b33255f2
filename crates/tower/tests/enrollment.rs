//! Clients enroll through the API: a single-use token from the operator, no configuration
//! edit, no restart; the pinned client survives a restart.

use vigil_policy::bitcoin::bip32::Xpriv;
use vigil_policy::bitcoin::Amount;
use vigil_policy::example::ExamplePolicy;
use vigil_policy::example::{account_key, auth_keypair, master_key};
use vigil_policy::VaultKind;
use vigil_testenv::household::{example, get, post, Household, Refused};
use vigil_testenv::process::{vigil_node, TowerProcess};
use vigil_testenv::Vault;
use vigil_tower::wire::{self, ChangePolicy, EnrollClient, SignedPolicy};

#[test]
fn a_client_pins_its_policy_with_a_single_use_token() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut tower = TowerProcess::new(&node, &[], 0, None);
    let mut h = Household::new(dir.path(), &node, naming(example("enrolled"), &tower));
    let policy = std::fs::read_to_string(&h.policy_path).unwrap();
    let token = tower.token();
    let enroll = |h: &mut Household, token: &str, policy: &str, key| {
        let req = EnrollClient {
            nonce: h.next_nonce(),
            token: token.into(),
            policy: policy.into(),
            changes: Vec::new(),
        };
        post(&tower.api, "/v1/clients", &serde_json::to_vec(&req).unwrap(), key)
    };
    let guardian = auth_keypair(&h.keys.guardians[0]);
    assert_eq!(enroll(&mut h, &token, &policy, &guardian).unwrap_err().0, 403, "a guardian does not enroll");
    let owner = h.owner_auth();
    assert_eq!(enroll(&mut h, &"ab".repeat(32), &policy, &owner).unwrap_err().0, 401, "an unknown token");
    let ack = enroll(&mut h, &token, &policy, &owner).unwrap();
    assert_eq!(ack["subject"], format!("client {}", h.policy_id));
    // The same enrollment again (its answer lost) is the same; the token buys nothing else.
    enroll(&mut h, &token, &policy, &owner).unwrap();
    let other = Household::new(dir.path(), &node, example("enrolled other"));
    let other_policy = std::fs::read_to_string(&other.policy_path).unwrap();
    let used = enroll(&mut h, &token, &other_policy, &auth_keypair(&other.keys.owners[0])).unwrap_err();
    assert_eq!(used.0, 401, "{used:?}");
    // It serves the client at once, and after a restart.
    let vault = h.create_vault(&node.rpc, Amount::from_sat(2_000_000), VaultKind::Standard);
    h.protect(&node.rpc, &tower.api, &vault);
    tower.kill9();
    tower.start();
    assert!(get(&tower.api, &format!("/v1/clients/{}", h.policy_id), &owner).is_ok());
    assert!(get(&tower.api, &format!("/v1/vaults/{}", vault.outpoint()), &owner).is_ok());
}

#[test]
fn a_tower_a_change_added_checks_the_chain_of_signed_changes_itself() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    // Tower 9 is not named by the first policy: a change adds it.
    let mut tower = TowerProcess::new(&node, &[], 9, None);
    let mut h = Household::new(dir.path(), &node, example("enrolled by a change"));
    let first = std::fs::read_to_string(&h.policy_path).unwrap();
    let entry = format!(
        "\n[[towers]]\nname = \"tower-new\"\nurl = \"{}\"\nkey = \"{}\"\n",
        tower.api.url, tower.public_key
    );
    let adds = format!("{first}{entry}").replace("version = 1", "version = 2");
    let (id, keys) = (h.policy_id.clone(), h.keys.guardians.clone());
    let signed = |text: &str, guardians: &[usize]| {
        let digest = wire::policy_change_digest(&id, text);
        let signatures = guardians.iter().map(|g| wire::sign(&digest, &auth_keypair(&keys[*g]))).collect();
        SignedPolicy { policy: text.into(), signatures }
    };
    let token = tower.token();
    let (owner, cosigner) = (h.owner_auth(), auth_keypair(&h.keys.cosigner));
    let enroll_by = |h: &mut Household, changes: Vec<SignedPolicy>, key| {
        let req =
            EnrollClient { nonce: h.next_nonce(), token: token.clone(), policy: first.clone(), changes };
        post(&tower.api, "/v1/clients", &serde_json::to_vec(&req).unwrap(), key)
    };
    let enroll = |h: &mut Household, changes| enroll_by(h, changes, &cosigner);
    // Whoever holds the owner's device sees the token the owner hands the co-signer: the
    // first policy alone, which does not name this tower, is refused, and leaves it unused.
    let first_alone = enroll_by(&mut h, Vec::new(), &owner).unwrap_err();
    assert!(
        first_alone.0 == 400 && first_alone.1.contains("policy: version 1 does not name this tower"),
        "{first_alone:?}"
    );
    // Not the owner's keys: it could leave a tightening out, or end at a change still waiting.
    let by_owner = enroll_by(&mut h, vec![signed(&adds, &[0, 1])], &owner).unwrap_err();
    assert!(by_owner.0 == 403 && by_owner.1.contains("through its co-signer"), "{by_owner:?}");
    let refusals = [
        (
            vec![signed(&adds, &[0])],
            "changes[0]: a change needs 2 signatures of the guardians of version 1, 1 verify",
        ),
        (vec![signed(&adds.replace("version = 2", "version = 1"), &[0, 1])], "is not above 1"),
        (vec![signed(&first.replace("version = 1", "version = 2"), &[0, 1])], "does not name this tower"),
        (
            vec![signed(&adds, &[0, 1]), signed(&adds.replace("version = 2", "version = 3"), &[2])],
            "changes[1]",
        ),
    ];
    for (changes, why) in refusals {
        let refused = enroll(&mut h, changes).unwrap_err();
        assert!(refused.0 == 400 && refused.1.contains(why), "{why}: {refused:?}");
    }
    // Without an operator's token the chain is not even looked at (its checks take work).
    let stranger = EnrollClient {
        nonce: h.next_nonce(),
        token: "cd".repeat(32),
        policy: first.clone(),
        changes: vec![signed(&adds, &[0])],
    };
    let refused =
        post(&tower.api, "/v1/clients", &serde_json::to_vec(&stranger).unwrap(), &cosigner).unwrap_err();
    assert!(refused.0 == 401 && refused.1.contains("unknown enrollment token"), "{refused:?}");
    // Signed by the quorum of the version before it: pinned at version 2, under the first
    // policy's id; the refusals above did not use the token up.
    let ack = enroll(&mut h, vec![signed(&adds, &[0, 2])]).unwrap();
    assert_eq!(ack["subject"], format!("client {}", h.policy_id));
    let view = get(&tower.api, &format!("/v1/clients/{}", h.policy_id), &owner).unwrap();
    assert_eq!(view["version"], 2, "{view}");
    // A restart serves the version the chain led to, and keeps the one before it: a vault
    // made under version 1 is registered under it.
    tower.kill9();
    tower.start();
    let view = get(&tower.api, &format!("/v1/clients/{}", h.policy_id), &owner).unwrap();
    assert_eq!(view["version"], 2, "{view}");
    let vault = h.create_vault(&node.rpc, Amount::from_sat(2_000_000), VaultKind::Standard);
    let unknown = register_under(&tower, &h, &vault, 7).unwrap_err();
    assert!(unknown.0 == 400 && unknown.1.contains("it holds 2, 1"), "{unknown:?}");
    register_under(&tower, &h, &vault, 1).unwrap();
}

/// `example` naming `tower` as its first tower.
fn naming(mut example: ExamplePolicy, tower: &TowerProcess) -> ExamplePolicy {
    example.services.tower_urls = vec![tower.api.url.clone()];
    example.services.tower_keys = vec![tower.public_key.to_string()];
    example
}

/// `tower`'s entry in a policy file, as a change adds it.
fn entry(tower: &TowerProcess) -> String {
    format!(
        "\n[[towers]]\nname = \"tower-new\"\nurl = \"{}\"\nkey = \"{}\"\n",
        tower.api.url, tower.public_key
    )
}

/// The change to `text` of client `h`, signed by `guardians`.
fn signed(h: &Household, text: &str, guardians: &[Xpriv]) -> SignedPolicy {
    let digest = wire::policy_change_digest(&h.policy_id, text);
    let signatures = guardians.iter().map(|k| wire::sign(&digest, &auth_keypair(k))).collect();
    SignedPolicy { policy: text.into(), signatures }
}

/// `h` enrolled at `tower` by its co-signer, from its first policy through `changes`.
fn enroll(
    tower: &TowerProcess,
    h: &Household,
    token: &str,
    changes: Vec<SignedPolicy>,
) -> Result<serde_json::Value, Refused> {
    let first = std::fs::read_to_string(&h.policy_path).unwrap();
    let req = EnrollClient { nonce: h.next_nonce(), token: token.into(), policy: first, changes };
    post(&tower.api, "/v1/clients", &serde_json::to_vec(&req).unwrap(), &auth_keypair(&h.keys.cosigner))
}

/// The change to `text` of client `h`, signed by `guardians`, sent by the first of them.
fn change(
    tower: &TowerProcess,
    h: &Household,
    text: &str,
    guardians: &[Xpriv],
) -> Result<serde_json::Value, Refused> {
    let s = signed(h, text, guardians);
    let req = ChangePolicy {
        nonce: h.next_nonce(),
        policy_id: h.policy_id.clone(),
        policy: s.policy,
        signatures: s.signatures,
        not_before_height: None,
    };
    post(&tower.api, "/v1/policy", &serde_json::to_vec(&req).unwrap(), &auth_keypair(&guardians[0]))
}

/// `vault` registered at `tower` by `h`'s owner, under policy version `version`.
fn register_under(
    tower: &TowerProcess,
    h: &Household,
    vault: &Vault,
    version: u32,
) -> Result<serde_json::Value, Refused> {
    let mut req = wire::RegisterVault::new(
        &h.policy_id,
        h.next_nonce(),
        &vault.plan,
        &vault.graph,
        Some(&vault.funding),
    );
    req.policy_version = Some(version);
    post(&tower.api, "/v1/vaults", &serde_json::to_vec(&req).unwrap(), &h.owner_auth())
}

/// The client as `tower` serves it to `h`'s owner.
fn view(tower: &TowerProcess, h: &Household) -> serde_json::Value {
    get(&tower.api, &format!("/v1/clients/{}", h.policy_id), &h.owner_auth()).unwrap()
}

#[test]
fn a_tower_a_change_removed_takes_the_chain_to_the_version_naming_it_again_on_a_new_token() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut tower = TowerProcess::new(&node, &[], 9, None);
    let h = Household::new(dir.path(), &node, example("enrolled again"));
    let first = std::fs::read_to_string(&h.policy_path).unwrap();
    // Version 2 adds the tower; version 3 removes it and replaces guardian 2 (which the tower
    // never hears of); version 4 names it again.
    let replacement = master_key("enrolled again, later", "guardian", 2);
    let v2 = format!("{first}{}", entry(&tower)).replace("version = 1", "version = 2");
    let v3 = first
        .replace(&account_key(&h.keys.guardians[2]), &account_key(&replacement))
        .replace("version = 1", "version = 3");
    let v4 = format!("{v3}{}", entry(&tower)).replace("version = 3", "version = 4");
    let v5 = v4.replace("version = 4", "version = 5");
    let old = h.keys.guardians.clone();
    let new = [old[0], old[1], replacement];
    let first_token = tower.token();
    enroll(&tower, &h, &first_token, vec![signed(&h, &v2, &old[..2])]).unwrap();
    assert_eq!(view(&tower, &h)["version"], 2);
    // A change signed by today's guardians (version 4's) is one this tower cannot check.
    let unchecked = change(&tower, &h, &v5, &[new[0], new[2]]).unwrap_err();
    assert!(unchecked.0 == 400 && unchecked.1.contains("1 verify"), "{unchecked:?}");

    // The operator's new token and the chain through the version it holds: it takes version
    // 4, and keeps the ones before (a vault made under version 3 is registered under it).
    let chain = vec![signed(&h, &v2, &old[..2]), signed(&h, &v3, &old[..2]), signed(&h, &v4, &new[..2])];
    let token = tower.token();
    enroll(&tower, &h, &token, chain.clone()).unwrap();
    assert_eq!(view(&tower, &h)["version"], 4);
    enroll(&tower, &h, &token, chain).unwrap();
    tower.kill9();
    tower.start();
    assert_eq!(view(&tower, &h)["version"], 4, "after a restart");
    // Its guardians were told, once (the retry moved nothing), in the client's feed.
    let feed =
        get(&tower.api, &format!("/v1/clients/{}/alarms", h.policy_id), &auth_keypair(&new[0])).unwrap();
    let taken: Vec<_> = feed
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["message"].as_str().is_some_and(|m| m.contains("enrolled again")))
        .map(|a| (a["kind"].as_str(), a["client"].as_str()))
        .collect();
    assert_eq!(taken, [(Some("policy-applied"), Some(h.policy_id.as_str()))], "{feed}");
    // A change it holds, sent again (its answer lost): acknowledged, though a guardian who
    // signed it was replaced since.
    change(&tower, &h, &v3, &[old[0], old[2]]).unwrap();
    assert_eq!(view(&tower, &h)["version"], 4);
    // Version 5 changes nothing but its number: it applies at once.
    change(&tower, &h, &v5, &[new[0], new[2]]).unwrap();
    assert_eq!(view(&tower, &h)["version"], 5);
}

#[test]
fn a_token_first_used_for_another_version_is_refused_to_the_cosigner_not_acknowledged() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let tower = TowerProcess::new(&node, &[], 9, None);
    let h = Household::new(
        dir.path(),
        &node,
        ExamplePolicy { towers: 2, ..naming(example("token race"), &tower) },
    );
    let first = std::fs::read_to_string(&h.policy_path).unwrap();
    let named = format!(
        "\n[[towers]]\nname = \"tower-a\"\nurl = \"{}\"\nkey = \"{}\"\n",
        tower.api.url, tower.public_key
    );
    assert!(first.contains(&named));
    // Version 2 removes the tower, version 3 names it again; it never heard of either.
    let removed = first.replace(&named, "");
    let v2 = removed.replace("version = 1", "version = 2");
    let v3 = format!("{removed}{}", entry(&tower)).replace("version = 1", "version = 3");
    let quorum = &h.keys.guardians[..2];
    let owner = h.owner_auth();
    let alone = |token: &str| {
        let req = EnrollClient {
            nonce: h.next_nonce(),
            token: token.into(),
            policy: first.clone(),
            changes: vec![],
        };
        post(&tower.api, "/v1/clients", &serde_json::to_vec(&req).unwrap(), &owner)
    };
    alone(&tower.token()).unwrap();
    // The operator's new token, for the co-signer; the owner's device, in a captor's hands,
    // uses it first with the first policy: acknowledged, and nothing moves.
    let token = tower.token();
    alone(&token).unwrap();
    assert_eq!(view(&tower, &h)["version"], 1);
    // The co-signer's enrollment with it is not acknowledged as if it had pinned version 3.
    let chain = vec![signed(&h, &v2, quorum), signed(&h, &v3, quorum)];
    let refused = enroll(&tower, &h, &token, chain.clone()).unwrap_err();
    assert!(refused.0 == 409 && refused.1.contains("holds client"), "{refused:?}");
    assert!(refused.1.contains("at version 1 and has not heard of the changes to version 3"), "{refused:?}");
    assert_eq!(view(&tower, &h)["version"], 1);
    // A fresh token takes it there (a change removed the tower).
    enroll(&tower, &h, &tower.token(), chain).unwrap();
    assert_eq!(view(&tower, &h)["version"], 3);
}

#[test]
fn a_first_policy_pinned_first_is_never_acknowledged_as_the_version_the_cosigner_enrolls() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let tower = TowerProcess::new(&node, &[], 9, None);
    let h = Household::new(dir.path(), &node, naming(example("pinned first"), &tower));
    let first = std::fs::read_to_string(&h.policy_path).unwrap();
    // Version 2 only tightens: the tower is named all along, but its operator's token came
    // late (or its store was lost), and the owner's device, in a captor's hands, uses it first.
    let v2 = first
        .replace("hot_limit_sat = 2_000_000", "hot_limit_sat = 1_000_000")
        .replace("version = 1", "version = 2");
    let quorum = &h.keys.guardians[..2];
    let token = tower.token();
    let req = EnrollClient { nonce: h.next_nonce(), token: token.clone(), policy: first, changes: vec![] };
    post(&tower.api, "/v1/clients", &serde_json::to_vec(&req).unwrap(), &h.owner_auth()).unwrap();
    // Neither with that token nor with a fresh one is the co-signer told it serves version 2.
    for token in [token.clone(), tower.token()] {
        let refused = enroll(&tower, &h, &token, vec![signed(&h, &v2, quorum)]).unwrap_err();
        assert!(refused.0 == 409 && refused.1.contains("at version 1"), "{refused:?}");
        assert_eq!(view(&tower, &h)["version"], 1);
    }
    // The guardians hand it the change; then the enrollment is acknowledged.
    change(&tower, &h, &v2, quorum).unwrap();
    assert_eq!(view(&tower, &h)["version"], 2);
    enroll(&tower, &h, &token, vec![signed(&h, &v2, quorum)]).unwrap();
}

#[test]
fn a_tower_that_hears_the_changes_keeps_its_own_wait_on_a_new_token() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let tower = TowerProcess::new(&node, &[], 9, None);
    let h = Household::new(dir.path(), &node, example("enrolled twice"));
    let first = std::fs::read_to_string(&h.policy_path).unwrap();
    let v2 = format!("{first}{}", entry(&tower)).replace("version = 1", "version = 2");
    // A loosening: this tower, named all along, applies it after its own wait, not because
    // an enrollment says it applied.
    let loosened = v2.replace("hot_limit_sat = 2_000_000", "hot_limit_sat = 3_000_000");
    let v3 = loosened.replace("version = 2", "version = 3");
    assert_ne!(v3, v2.replace("version = 2", "version = 3"));
    let quorum = h.keys.guardians[..2].to_vec();
    enroll(&tower, &h, &tower.token(), vec![signed(&h, &v2, &quorum)]).unwrap();
    // Never told of version 3, it says so rather than acknowledge it.
    let chain = vec![signed(&h, &v2, &quorum), signed(&h, &v3, &quorum)];
    let unheard = enroll(&tower, &h, &tower.token(), chain).unwrap_err();
    assert!(unheard.0 == 409 && unheard.1.contains("not heard of the changes to version 3"), "{unheard:?}");
    assert_eq!(view(&tower, &h)["version"], 2);
    // Removed by a loosening it hears of and waits for, then named again: it keeps counting
    // that wait, and does not take the chain's end at once.
    let removes = first.replace("hot_limit_sat = 2_000_000", "hot_limit_sat = 3_000_000");
    let v3 = removes.replace("version = 1", "version = 3");
    let v4 = format!("{removes}{}", entry(&tower)).replace("version = 1", "version = 4");
    change(&tower, &h, &v3, &quorum).unwrap();
    let chain = vec![signed(&h, &v2, &quorum), signed(&h, &v3, &quorum), signed(&h, &v4, &quorum)];
    enroll(&tower, &h, &tower.token(), chain).unwrap();
    let view = view(&tower, &h);
    assert_eq!(
        (view["version"].as_u64(), view["pending"][0]["version"].as_u64()),
        (Some(2), Some(3)),
        "{view}"
    );
}

#[test]
fn a_tower_that_heard_of_the_change_naming_it_again_learns_the_versions_it_missed() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let tower = TowerProcess::new(&node, &[], 9, None);
    let mut h = Household::new(dir.path(), &node, example("enrolled, removed, told"));
    let first = std::fs::read_to_string(&h.policy_path).unwrap();
    // Version 3 removes the tower (it never hears of it) and lowers a limit; version 4 names
    // it again, and only tightens version 2, which the tower holds: it applies at once.
    let v2 = format!("{first}{}", entry(&tower)).replace("version = 1", "version = 2");
    let v3 = first
        .replace("hot_limit_sat = 2_000_000", "hot_limit_sat = 1_000_000")
        .replace("version = 1", "version = 3");
    let v4 = format!("{v3}{}", entry(&tower)).replace("version = 3", "version = 4");
    let quorum = h.keys.guardians[..2].to_vec();
    enroll(&tower, &h, &tower.token(), vec![signed(&h, &v2, &quorum)]).unwrap();
    change(&tower, &h, &v4, &quorum).unwrap();
    assert_eq!(view(&tower, &h)["version"], 4);
    // Which versions it holds: a vault registered under one it does not hold is refused,
    // naming them.
    let vault = h.create_vault(&node.rpc, Amount::from_sat(2_000_000), VaultKind::Standard);
    let holds = |h: &Household| register_under(&tower, h, &vault, 7).unwrap_err().1;
    assert!(holds(&h).contains("it holds 4, 2, 1"), "{}", holds(&h));
    let chain = vec![signed(&h, &v2, &quorum), signed(&h, &v3, &quorum), signed(&h, &v4, &quorum)];
    enroll(&tower, &h, &tower.token(), chain).unwrap();
    assert!(holds(&h).contains("it holds 4, 3, 2, 1"), "{}", holds(&h));
}

#[test]
fn a_tower_is_enrolled_through_a_chain_of_long_whitelists_larger_than_any_other_request() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let tower = TowerProcess::new(&node, &[], 9, None);
    let h = Household::new(dir.path(), &node, example("enrolled with a long whitelist"));
    let first = std::fs::read_to_string(&h.policy_path).unwrap();
    // Version 2 adds the tower and the longest whitelist; each version after it takes one
    // destination off (a tightening).
    let listed = vigil_policy::example::destinations("treasury", vigil_policy::MAX_WHITELIST);
    let version = |v: usize| {
        let entries: String = listed[v - 2..].iter().map(|a| format!("  \"{a}\",\n")).collect();
        format!("{first}{}", entry(&tower))
            .replace("version = 1", &format!("version = {v}"))
            .replace("whitelist = []", &format!("whitelist = [\n{entries}]"))
    };
    let quorum = &h.keys.guardians[..2];
    let chain: Vec<_> = (2..=9).map(|v| signed(&h, &version(v), quorum)).collect();
    let body = serde_json::to_vec(&EnrollClient {
        nonce: 0,
        token: String::new(),
        policy: first,
        changes: chain.clone(),
    });
    assert!(body.unwrap().len() > vigil_tower::api::MAX_BODY, "the chain is larger than any other request");
    enroll(&tower, &h, &tower.token(), chain).unwrap();
    assert_eq!(view(&tower, &h)["version"], 9);
}
