//! Clients enroll through the API: a single-use token from the operator, no configuration
//! edit, no restart; the pinned client survives a restart.

use vigil_policy::bitcoin::Amount;
use vigil_policy::example::auth_keypair;
use vigil_policy::VaultKind;
use vigil_testenv::household::{example, get, post, Household};
use vigil_testenv::process::{vigil_node, TowerProcess};
use vigil_tower::wire::EnrollClient;

#[test]
fn a_client_pins_its_policy_with_a_single_use_token() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut tower = TowerProcess::new(&node, &[], 0, None);
    let mut h = Household::new(dir.path(), &node, example("enrolled"));
    let policy = std::fs::read_to_string(&h.policy_path).unwrap();
    let token = tower.token();
    let enroll = |h: &mut Household, token: &str, policy: &str, key| {
        let req = EnrollClient { nonce: h.next_nonce(), token: token.into(), policy: policy.into() };
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
