//! The policy file's rules and the graph's determinism, without a chain.

use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::{consensus::serialize, Amount, OutPoint, ScriptBuf, TxOut, Txid};
use vigil_policy::example::ExamplePolicy;
use vigil_policy::{CompiledPolicy, FundingInput, OneTimeKey, Policy, PolicyError, VaultKind};

fn example() -> String {
    ExamplePolicy::default().to_toml()
}

fn field_error(text: &str) -> (String, String) {
    match Policy::from_toml(text) {
        Err(PolicyError::Field { field, reason }) => (field, reason),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn the_shipped_example_is_the_generated_one_and_valid() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy.toml")).unwrap();
    assert_eq!(shipped, example(), "regenerate with `vigil policy example > examples/policy.toml`");
    let policy = Policy::from_toml(&shipped).unwrap();
    assert_eq!((policy.guardians.threshold, policy.guardians.keys.len()), (2, 3));
    assert_eq!(policy.delays.unvault, 144);
}

#[test]
fn malformed_file_is_a_syntax_error() {
    for text in ["version = ", "this is not toml", &example().replace("[owner]", "[owner")] {
        let err = Policy::from_toml(text).unwrap_err();
        assert!(matches!(err, PolicyError::Syntax(_)), "{err}");
    }
    let err = Policy::from_toml(&example().replace("[cosigner]", "[cosigner]\nsurprise = 1")).unwrap_err();
    assert!(err.to_string().contains("surprise"), "{err}");
}

#[test]
fn each_bad_field_is_named_with_its_reason() {
    let good = example();
    let owner_key = Policy::from_toml(&good).unwrap().owner.keys[0].xpub.to_string();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            good.replace(&owner_key, "L1aW4aubDFB7yfras2S1mN3bqg9nwySY8nkoLmJebSLD5BWv3ENZ"),
            "owner.keys[0]",
            "unknown key format",
        ),
        (good.replace(&owner_key, &owner_key.replacen("tpub", "tprv", 1)), "owner.keys[0]", "private key"),
        (
            good.replace("threshold = 2", "threshold = 4"),
            "guardians.threshold",
            "between 1 and the number of keys",
        ),
        (good.replace("unvault = 144", "unvault = 0"), "delays.unvault", "at least 1 block"),
        (good.replace("unvault = 144", "unvault = 65536"), "delays.unvault", "65535"),
        (good.replace("deep_vault = 8640", "deep_vault = 100"), "delays.deep_vault", "shorter than DELAY"),
        (good.replace("recovery = 4320", "recovery = 100"), "delays.recovery", "shorter than delays.unvault"),
        (
            good.replace("velocity_limit_sat = 10000000", "velocity_limit_sat = 300"),
            "allowance.velocity_limit_sat",
            "dust",
        ),
        (
            good.replace("whitelist = []", "whitelist = [\"bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq\"]"),
            "allowance.whitelist[0]",
            "not an address of the policy's network",
        ),
        (
            good.replace("network = \"regtest\"", "network = \"bitcoin\""),
            "owner.keys[0]",
            "the policy is for bitcoin",
        ),
        (good.replace("network = \"regtest\"", "network = \"moon\""), "network", "unknown network"),
        (
            good.replace("ladder_sat_per_vb = [1, 2", "ladder_sat_per_vb = [2, 1"),
            "fees.ladder_sat_per_vb[1]",
            "strictly increase",
        ),
        (
            good.replace("url = \"http://127.0.0.1:7431\"", "url = \"ftp://x\""),
            "towers[0].url",
            "not an http",
        ),
        (
            format!("{good}{}", "[[towers]]\nname = \"t\"\nurl = \"http://t\"\nkey = \"02\"\n".repeat(16)),
            "towers",
            "at most 16",
        ),
    ];
    for (text, field, reason) in cases {
        let (f, r) = field_error(&text);
        assert_eq!(f, field, "{r}");
        assert!(r.contains(reason), "{field}: {r}");
    }
}

#[test]
fn a_tower_keeps_its_name_and_its_key_across_versions() {
    let v1 = Policy::from_toml(&example()).unwrap();
    let next = |from: &str, to: &str| {
        Policy::from_toml(&example().replace("version = 1", "version = 2").replace(from, to)).unwrap()
    };
    let b_key = v1.towers[1].key.to_string();
    // A tower may move to another URL.
    next("http://127.0.0.1:7432", "https://tower-b.example").towers_agree_with(&v1, &v1).unwrap();
    let other_key = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
    let cases = [
        (next(&b_key, other_key), "towers[1].key", "\"tower-b\" had another key in version 1"),
        (next("\"tower-b\"", "\"tower-c\""), "towers[1].name", "this tower was \"tower-b\" in version 1"),
    ];
    for (v2, field_named, why) in cases {
        match v2.towers_agree_with(&v1, &v1) {
            Err(PolicyError::Field { field, reason }) => {
                assert_eq!(field, field_named);
                assert!(reason.contains(why), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // A tower today's version names with the same key is not checked against history.
        v2.towers_agree_with(&v1, &v2).unwrap();
    }
}

#[test]
fn a_key_used_twice_is_refused() {
    let good = example();
    let policy = Policy::from_toml(&good).unwrap();
    let cosigner = policy.cosigner.xpub.to_string();
    let backup = policy.backup.xpub.to_string();
    let (field, reason) = field_error(&good.replace(&backup, &cosigner));
    assert!(field == "cosigner.key" || field == "owner.backup", "{field}");
    assert!(reason.contains("twice"));
}

#[test]
fn the_same_key_re_encoded_is_still_the_same_key() {
    // A guardian's key written again with another depth, parent fingerprint and child number
    // (or even another chain code, or negated) is the same signer: 2-of-3 must not become
    // 2-of-"2".
    let good = example();
    let policy = Policy::from_toml(&good).unwrap();
    let g0 = policy.guardians.keys[0].xpub;
    let g1 = policy.guardians.keys[1].xpub.to_string();
    let variants = [
        vigil_policy::bitcoin::bip32::Xpub { depth: 3, ..g0 },
        vigil_policy::bitcoin::bip32::Xpub { parent_fingerprint: [1, 2, 3, 4].into(), ..g0 },
        vigil_policy::bitcoin::bip32::Xpub {
            child_number: vigil_policy::bitcoin::bip32::ChildNumber::from_hardened_idx(7).unwrap(),
            ..g0
        },
        vigil_policy::bitcoin::bip32::Xpub { chain_code: [9; 32].into(), ..g0 },
        // The negated key: its private key is the negated private key, held by the same guardian.
        vigil_policy::bitcoin::bip32::Xpub {
            public_key: g0.public_key.negate(&vigil_policy::bitcoin::secp256k1::Secp256k1::new()),
            chain_code: [9; 32].into(),
            ..g0
        },
    ];
    for twin in variants {
        assert_ne!(twin.to_string(), g0.to_string(), "a different encoding");
        let (field, reason) = field_error(&good.replace(&g1, &twin.to_string()));
        assert_eq!(field, "guardians.keys[1]", "{reason}");
        assert!(reason.contains("twice"), "{reason}");
    }
}

#[test]
fn outside_regtest_delay_has_adr_0002s_floor() {
    use vigil_policy::MIN_PUBLIC_DELAY_BLOCKS;
    // The example's keys are for test networks: signet and testnet share them.
    let on = |network: &str, delay: u16| {
        example()
            .replace("network = \"regtest\"", &format!("network = \"{network}\""))
            .replace("unvault = 144", &format!("unvault = {delay}"))
    };
    for network in ["signet", "testnet", "testnet4"] {
        let (field, reason) = field_error(&on(network, MIN_PUBLIC_DELAY_BLOCKS - 1));
        assert_eq!(field, "delays.unvault");
        assert!(reason.contains("ADR 0002"), "{reason}");
        Policy::from_toml(&on(network, MIN_PUBLIC_DELAY_BLOCKS)).unwrap();
    }
    Policy::from_toml(&on("regtest", 6)).expect("regtest tests use short delays on purpose");
}

fn plan_and_funding(
    compiled: &CompiledPolicy,
    owner: XOnlyPublicKey,
    cosigner: XOnlyPublicKey,
) -> (vigil_policy::VaultPlan, OutPoint) {
    let plan = compiled.plan(7, Amount::from_sat(3_000_000), VaultKind::Standard, owner, cosigner).unwrap();
    (plan, OutPoint { txid: Txid::from_raw_hash(vigil_policy::bitcoin::hashes::Hash::all_zeros()), vout: 1 })
}

#[test]
fn two_parties_build_byte_identical_graphs() {
    let (owner, cosigner) = (OneTimeKey::generate(), OneTimeKey::generate());
    // Each party compiles the policy from the file on its own.
    let a = CompiledPolicy::new(Policy::from_toml(&example()).unwrap()).unwrap();
    let b = CompiledPolicy::new(Policy::from_toml(&example()).unwrap()).unwrap();
    let (plan_a, v) = plan_and_funding(&a, owner.public(), cosigner.public());
    let (plan_b, _) = plan_and_funding(&b, owner.public(), cosigner.public());
    let ga = a.build_graph(&plan_a, v).unwrap();
    let gb = b.build_graph(&plan_b, v).unwrap();
    let bytes =
        |g: &vigil_policy::UnsignedGraph| g.transactions().map(|t| serialize(&t.tx)).collect::<Vec<_>>();
    assert_eq!(bytes(&ga), bytes(&gb));
    // Signatures differ between signings (fresh nonces) but txids never do.
    let signed = ga.finalize(&owner.sign(&ga).unwrap(), &cosigner.sign(&ga).unwrap()).unwrap();
    let txids =
        |it: Vec<vigil_policy::bitcoin::Transaction>| it.iter().map(|t| t.compute_txid()).collect::<Vec<_>>();
    assert_eq!(
        txids(signed.transactions().map(|t| t.tx.clone()).collect()),
        txids(gb.transactions().map(|t| t.tx.clone()).collect())
    );
    // A different one-time key changes the graph.
    let other = OneTimeKey::generate();
    let (plan_c, _) = plan_and_funding(&a, other.public(), cosigner.public());
    assert_ne!(bytes(&a.build_graph(&plan_c, v).unwrap()), bytes(&ga));
}

#[test]
fn exactly_one_unvault_and_every_child_spends_it() {
    let compiled = CompiledPolicy::new(Policy::from_toml(&example()).unwrap()).unwrap();
    let (o, c) = (OneTimeKey::generate(), OneTimeKey::generate());
    let (plan, v) = plan_and_funding(&compiled, o.public(), c.public());
    let g = compiled.build_graph(&plan, v).unwrap();
    let u = g.unvault_txid();
    for t in g.cancels.iter().chain(&g.unvault_emergencies) {
        assert_eq!(t.tx.input[0].previous_output, OutPoint { txid: u, vout: 0 });
    }
    for t in &g.emergencies {
        assert_eq!(t.tx.input[0].previous_output, v);
    }
    assert!(g.transactions().all(|t| t.tx.input.len() == 1 && t.tx.version.0 == 3));
}

#[test]
fn non_segwit_funding_inputs_are_refused() {
    let compiled = CompiledPolicy::new(Policy::from_toml(&example()).unwrap()).unwrap();
    let (o, c) = (OneTimeKey::generate(), OneTimeKey::generate());
    let (plan, _) = plan_and_funding(&compiled, o.public(), c.public());
    let p2pkh = ScriptBuf::new_p2pkh(&vigil_policy::bitcoin::PubkeyHash::from_raw_hash(
        vigil_policy::bitcoin::hashes::Hash::all_zeros(),
    ));
    let p2sh = ScriptBuf::new_p2sh(&vigil_policy::bitcoin::ScriptHash::from_raw_hash(
        vigil_policy::bitcoin::hashes::Hash::all_zeros(),
    ));
    for script in [p2pkh, p2sh] {
        let input = FundingInput {
            outpoint: OutPoint::null(),
            txout: TxOut { value: Amount::from_sat(10_000_000), script_pubkey: script },
            intake_index: 0,
            change: false,
        };
        let change = vigil_policy::ChangeTo { index: 1, change_branch: false };
        let err = compiled.funding_psbt(&plan, &[input], change, 2).unwrap_err();
        assert!(matches!(err, PolicyError::NonSegwitFundingInput { input: 0, .. }), "{err}");
    }
}

#[test]
fn amounts_are_checked() {
    let compiled = CompiledPolicy::new(Policy::from_toml(&example()).unwrap()).unwrap();
    let (o, c) = (OneTimeKey::generate(), OneTimeKey::generate());
    let min = compiled.min_vault_amount();
    let plan = |a: Amount, k| compiled.plan(0, a, k, o.public(), c.public());
    assert!(matches!(
        plan(min - Amount::from_sat(1), VaultKind::Standard),
        Err(PolicyError::AmountTooSmall { .. })
    ));
    assert!(matches!(
        plan(Amount::from_sat(330), VaultKind::Standard),
        Err(PolicyError::AmountTooSmall { .. })
    ));
    let at_min = plan(min, VaultKind::Standard).unwrap();
    let g = compiled.build_graph(&at_min, OutPoint::null()).unwrap();
    // At the minimum, the deepest outputs are still above dust.
    assert!(g.transactions().all(|t| t.tx.output[0].value.to_sat() >= 330));
    assert!(matches!(
        plan(Amount::from_sat(20_000_000), VaultKind::Standard),
        Err(PolicyError::StandardVaultTooLarge { .. })
    ));
    assert!(plan(Amount::from_sat(20_000_000), VaultKind::Guarded).is_ok());
    assert!(matches!(
        plan(Amount::MAX_MONEY + Amount::from_sat(1), VaultKind::Guarded),
        Err(PolicyError::AmountTooLarge(_))
    ));
}

#[test]
fn ladder_is_capped_by_the_vault_value() {
    let compiled = CompiledPolicy::new(Policy::from_toml(&example()).unwrap()).unwrap();
    let (o, c) = (OneTimeKey::generate(), OneTimeKey::generate());
    let small =
        compiled.plan(0, Amount::from_sat(100_000), VaultKind::Standard, o.public(), c.public()).unwrap();
    let g = compiled.build_graph(&small, OutPoint::null()).unwrap();
    assert!(g.cancels.len() < 8);
    assert!(g.cancels.iter().skip(1).all(|t| t.fee.to_sat() <= 5_000), "5% of 100,000 sat");
    let rates: Vec<u64> = g.cancels.iter().map(|t| t.feerate_sat_per_vb).collect();
    assert!(rates.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn named_auth_keys_replace_the_derived_ones_and_each_party_has_its_own() {
    let good = example();
    let derived = Policy::from_toml(&good).unwrap();
    let (a, b) = ("aa".repeat(32), "bb".repeat(32));
    // An x-only key that is on the curve: the co-signer's derived auth key, for the clash case.
    let cosigner_auth = derived.cosigner.auth_key().to_string();
    let g1 = vigil_policy::bitcoin::key::Keypair::from_seckey_slice(
        &vigil_policy::bitcoin::secp256k1::Secp256k1::new(),
        &[7; 32],
    )
    .unwrap()
    .x_only_public_key()
    .0
    .to_string();
    let named = good.replacen("\nkeys = [", &format!("\nauth_keys = [\"{g1}\"]\nkeys = ["), 1);
    let policy = Policy::from_toml(&named).unwrap();
    assert_eq!(policy.owner.keys[0].auth_key().to_string(), g1);
    assert_ne!(policy.owner.keys[0].auth_key(), derived.owner.keys[0].auth_key());
    assert_eq!(
        policy.guardians.keys[0].auth_key(),
        derived.guardians.keys[0].auth_key(),
        "others derive theirs"
    );
    for (auth, reason) in [
        (format!("[\"{g1}\", \"{g1}\"]"), "2 auth keys for 1 keys"),
        (format!("[\"{a}{b}\"]"), "not an x-only public key"),
        (format!("[\"{cosigner_auth}\"]"), "cosigner.key's too"),
    ] {
        let text = good.replacen("\nkeys = [", &format!("\nauth_keys = {auth}\nkeys = ["), 1);
        let (field, why) = field_error(&text);
        assert!(field.starts_with("owner.auth_keys"), "{field}: {why}");
        assert!(why.contains(reason), "{why}");
    }
}

#[test]
fn descriptors_at_an_index_equal_the_ranged_ones_derived_there() {
    // The spend path builds its descriptors from keys derived once; a PSBT signer must find
    // the same scripts and key origins as in the ranged descriptors a wallet imports.
    use std::str::FromStr;
    use vigil_policy::bitcoin::psbt::Psbt;
    use vigil_policy::bitcoin::transaction::{Transaction, TxIn, Version};
    use vigil_policy::miniscript::descriptor::DescriptorPublicKey;
    use vigil_policy::miniscript::psbt::PsbtExt;
    use vigil_policy::miniscript::Descriptor;
    for format in [1, 2] {
        let policy =
            Policy::from_toml(&ExamplePolicy { format, ..ExamplePolicy::default() }.to_toml()).unwrap();
        let compiled = CompiledPolicy::new(policy).unwrap();
        let ranged = compiled.ranged_descriptors().unwrap();
        for index in [0, 7, (1 << 31) - 1] {
            // Keys derived a moment ago are taken again from memory: the same.
            assert_eq!(
                compiled.intake_descriptor(index).unwrap(),
                compiled.intake_descriptor(index).unwrap()
            );
            let pairs = [
                (&ranged.intake, compiled.intake_descriptor(index).unwrap()),
                (&ranged.deep_vault, compiled.deep_vault_descriptor(index).unwrap()),
            ];
            for (text, at_index) in pairs {
                let expected = Descriptor::<DescriptorPublicKey>::from_str(text)
                    .unwrap()
                    .at_derivation_index(index)
                    .unwrap();
                assert_eq!(
                    at_index.script_pubkey(),
                    expected.script_pubkey(),
                    "format {format} index {index}"
                );
                let update = |d: &Descriptor<_>| {
                    let tx = Transaction {
                        version: Version::TWO,
                        lock_time: vigil_policy::bitcoin::absolute::LockTime::ZERO,
                        input: vec![TxIn::default()],
                        output: vec![],
                    };
                    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
                    psbt.inputs[0].witness_utxo =
                        Some(TxOut { value: Amount::from_sat(10_000), script_pubkey: d.script_pubkey() });
                    psbt.update_input_with_descriptor(0, d).unwrap();
                    psbt.inputs.remove(0)
                };
                let (ours, theirs) = (update(&at_index), update(&expected));
                assert!(!theirs.tap_key_origins.is_empty() && theirs.tap_internal_key.is_some());
                assert_eq!(ours, theirs, "format {format} index {index}");
            }
        }
    }
}

#[test]
fn a_policy_offered_now_is_small_enough_for_every_request_that_carries_it() {
    use vigil_policy::{example::destinations, MAX_POLICY_BYTES, MAX_WHITELIST};
    let listing = |n| {
        let entries =
            destinations("whitelist", n).iter().map(|a| format!("  \"{a}\",\n")).collect::<String>();
        example().replace("whitelist = []", &format!("whitelist = [\n{entries}]"))
    };
    // The longest whitelist fits, with room for comments.
    let longest = listing(MAX_WHITELIST);
    assert!(longest.len() < MAX_POLICY_BYTES * 3 / 4, "{} bytes", longest.len());
    assert_eq!(Policy::from_new_toml(&longest).unwrap().allowance.whitelist.len(), MAX_WHITELIST);
    let longer = listing(MAX_WHITELIST + 1);
    match Policy::from_new_toml(&longer) {
        Err(PolicyError::Field { field, reason }) => {
            assert_eq!(field, "allowance.whitelist");
            assert!(reason.contains("501 destinations: at most 500"), "{reason}");
        }
        other => panic!("expected a field error, got {other:?}"),
    }
    // Past the size limit, nothing else is read: a comment is enough.
    let padded = format!("{}\n# {}", example(), "x".repeat(MAX_POLICY_BYTES));
    match Policy::from_new_toml(&padded) {
        Err(e @ PolicyError::TooLarge { .. }) => {
            assert!(e.to_string().contains(&format!("at most {MAX_POLICY_BYTES}")), "{e}")
        }
        other => panic!("expected a size refusal, got {other:?}"),
    }
    // A policy pinned before the limits existed is still read: a stored one never stops parsing.
    Policy::from_toml(&longer).unwrap();
    Policy::from_toml(&padded).unwrap();
}
