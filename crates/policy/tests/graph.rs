//! The vault graph, proven against Bitcoin Core's validation engine on the embedded chain.

use vigil_policy::bitcoin::hashes::Hash;
use vigil_policy::bitcoin::secp256k1::{Keypair, Message, Secp256k1};
use vigil_policy::bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use vigil_policy::bitcoin::taproot::{LeafVersion, TapLeafHash};
use vigil_policy::bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxOut, Witness};
use vigil_policy::example::ExamplePolicy;
use vigil_policy::{taproot_leaves, OneTimeKey, SpendInput, VaultKind};
use vigil_regtest::{ChainError, RegtestChain, SubmitError, TxStatus};
use vigil_testenv::{Env, Signer, Vault};

const DELAY: u32 = 10;
const RECOVERY: u32 = 30;
const LONG: u32 = 40;

thread_local! {
    /// The policy format this test's environment uses: each test runs in both (ADR 0005).
    static FORMAT: std::cell::Cell<u32> = const { std::cell::Cell::new(1) };
}

fn env() -> Env {
    let format = FORMAT.get();
    let env = Env::new(ExamplePolicy {
        delay: DELAY,
        recovery: RECOVERY,
        deep_vault: LONG,
        format,
        ..ExamplePolicy::default()
    })
    .unwrap();
    // The format asked for is the one built: else both runs would test format 1.
    assert_eq!(env.compiled.policy().format as u32, format);
    env
}

/// Every test again under format 2, whose keys derive per leaf and whose internal key is an
/// xpub: the same graph must hold against the kernel.
macro_rules! also_in_format_2 {
    ($($test:ident),* $(,)?) => {
        mod format_2 {
            $(
                #[test]
                fn $test() {
                    super::FORMAT.set(2);
                    super::$test()
                }
            )*
        }
    };
}

also_in_format_2!(
    every_transaction_at_every_rung_is_relayable_and_mined,
    delayed_spend_rejected_one_block_before_delay_accepted_at_delay,
    cancel_and_unvault_emergency_work_at_any_height_after_unvault,
    emergency_accepted_while_vault_unspent_and_refused_after_unvault,
    deep_vault_slow_path_only_at_long,
    deep_vault_fast_path_needs_everyone_and_works_at_once,
    spend_leaf_without_cosigner_and_wrong_keys_are_rejected_by_the_kernel,
    guarded_spend_leaf_without_guardians_is_rejected,
    recovery_leaves_open_exactly_at_t_recover_without_the_cosigner,
    recovery_output_cooperative_leaf_needs_cosigner_and_guardians,
    a_reorged_unvault_re_mined_still_takes_its_cancel,
    every_signature_is_sighash_default_or_all,
    one_time_secrets_never_reach_disk_or_any_returned_value,
    the_recovery_leaf_a_guardian_signs_is_the_one_in_every_recoverable_output,
    the_deep_vault_leaves_are_those_of_the_output_e_pays,
    a_fundings_change_funds_the_next_vault,
    only_the_owners_valid_spend_signatures_are_counted_and_returned,
);

fn sink() -> ScriptBuf {
    // Any standard output will do as a destination.
    ScriptBuf::new_p2wpkh(&vigil_policy::bitcoin::WPubkeyHash::all_zeros())
}

/// `tx` (whose relative lock opens at `first_valid`) is refused by the pool and by the kernel
/// in a block one block early, then accepted and mined exactly at `first_valid`.
fn refused_early_then_mined_at(chain: &mut RegtestChain, tx: &Transaction, first_valid: u32) {
    chain.mine_to_height(first_valid - 2).unwrap();
    assert_eq!(chain.height() + 1, first_valid - 1);
    match chain.submit(tx) {
        Err(SubmitError::SequenceLock { first_valid_height, .. }) => {
            assert_eq!(first_valid_height, first_valid)
        }
        other => panic!("expected a sequence-lock refusal, got {other:?}"),
    }
    let err = chain.block().with_pending(false).with_transactions([tx.clone()]).mine().unwrap_err();
    assert!(matches!(err, ChainError::BlockRejected { .. }), "{err}");
    assert!(err.to_string().contains("non-BIP68-final") || err.to_string().contains("Locktime"), "{err}");
    chain.mine(1).unwrap();
    chain.submit(tx).unwrap();
    chain.mine(1).unwrap();
    assert_eq!(
        chain.tx_status(&tx.compute_txid()),
        Some(TxStatus::Confirmed { height: first_valid, confirmations: 1 })
    );
}

fn confirmed_height(chain: &RegtestChain, tx: &Transaction) -> u32 {
    match chain.tx_status(&tx.compute_txid()) {
        Some(TxStatus::Confirmed { height, .. }) => height,
        other => panic!("not confirmed: {other:?}"),
    }
}

#[test]
fn every_transaction_at_every_rung_is_relayable_and_mined() {
    let mut env = env();
    let probe = env.create_vault(Amount::from_sat(5_000_000), VaultKind::Standard).unwrap();
    let rungs = probe.graph.graph().cancels.len();
    assert!(rungs >= 5, "the example ladder keeps most rungs for 0.05 BTC, got {rungs}");
    // Every rung of every role passes the pool: consensus (kernel) and relay policy.
    env.chain.test_accept(probe.graph.unvault()).unwrap();
    for e in &probe.graph.graph().emergencies {
        env.chain.test_accept(&e.tx).unwrap();
    }
    env.confirm(&probe.graph.unvault().clone()).unwrap();
    for p in probe.graph.graph().cancels.iter().chain(&probe.graph.graph().unvault_emergencies) {
        env.chain.test_accept(&p.tx).unwrap();
    }
    // And each rung is mined, one vault per rung (they conflict with each other).
    for rung in 0..rungs {
        let v = env.create_vault(Amount::from_sat(5_000_000), VaultKind::Standard).unwrap();
        env.confirm(v.graph.unvault()).unwrap();
        env.confirm(v.graph.cancel(rung).unwrap()).unwrap();
        let v = env.create_vault(Amount::from_sat(5_000_000), VaultKind::Standard).unwrap();
        env.confirm(v.graph.emergency(rung).unwrap()).unwrap();
        let v = env.create_vault(Amount::from_sat(5_000_000), VaultKind::Standard).unwrap();
        env.confirm(v.graph.unvault()).unwrap();
        env.confirm(v.graph.unvault_emergency(rung).unwrap()).unwrap();
    }
}

#[test]
fn delayed_spend_rejected_one_block_before_delay_accepted_at_delay() {
    for kind in [VaultKind::Standard, VaultKind::Guarded] {
        let mut env = env();
        let vault = env.create_vault(Amount::from_sat(2_000_000), kind).unwrap();
        env.confirm(vault.graph.unvault()).unwrap();
        let u_height = confirmed_height(&env.chain, vault.graph.unvault());
        let spend = env.delayed_spend(&vault, sink(), Amount::from_sat(1_000)).unwrap();
        refused_early_then_mined_at(&mut env.chain, &spend, u_height + DELAY);
    }
}

#[test]
fn cancel_and_unvault_emergency_work_at_any_height_after_unvault() {
    let mut env = env();
    // C as the unconfirmed U's TRUC child, in the same block.
    let v = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Standard).unwrap();
    env.chain.submit(v.graph.unvault()).unwrap();
    env.chain.submit(v.graph.cancel(0).unwrap()).unwrap();
    env.chain.mine(1).unwrap();
    assert_eq!(
        confirmed_height(&env.chain, v.graph.unvault()),
        confirmed_height(&env.chain, v.graph.cancel(0).unwrap())
    );
    // At U's height + 1, and at the last block before the spend leaf opens.
    for wait in [0, DELAY - 1] {
        for use_ue in [false, true] {
            let v = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Standard).unwrap();
            env.confirm(v.graph.unvault()).unwrap();
            env.chain.mine(wait).unwrap();
            let tx = if use_ue { v.graph.unvault_emergency(0) } else { v.graph.cancel(0) }.unwrap().clone();
            env.confirm(&tx).unwrap();
        }
    }
    // Long after DELAY too (the tower was late but the owner never spent).
    let v = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Standard).unwrap();
    env.confirm(v.graph.unvault()).unwrap();
    env.chain.mine(DELAY * 3).unwrap();
    env.confirm(v.graph.cancel(1).unwrap()).unwrap();
}

#[test]
fn emergency_accepted_while_vault_unspent_and_refused_after_unvault() {
    let mut env = env();
    let v = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Guarded).unwrap();
    env.chain.mine(5).unwrap();
    env.confirm(v.graph.emergency(0).unwrap()).unwrap();
    let v = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Guarded).unwrap();
    env.confirm(v.graph.unvault()).unwrap();
    assert!(matches!(env.chain.submit(v.graph.emergency(0).unwrap()), Err(SubmitError::MissingInput { .. })));
}

fn deep_vault_coin(env: &mut Env) -> (Vault, SpendInput) {
    let v = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Standard).unwrap();
    let e = v.graph.emergency(0).unwrap().clone();
    env.confirm(&e).unwrap();
    let input = SpendInput {
        outpoint: OutPoint { txid: e.compute_txid(), vout: 0 },
        txout: e.output[0].clone(),
        descriptor: v.descriptors.deep_vault.clone(),
        sequence: Sequence::from_height(LONG as u16),
    };
    (v, input)
}

#[test]
fn deep_vault_slow_path_only_at_long() {
    let mut env = env();
    let (_, input) = deep_vault_coin(&mut env);
    let created = env.chain.coin(&input.outpoint).unwrap().height;
    let mut signers = vec![Signer::Backup];
    signers.extend(env.guardian_quorum());
    let tx = env.spend_with(input, sink(), Amount::from_sat(1_000), &signers).unwrap();
    refused_early_then_mined_at(&mut env.chain, &tx, created + LONG);
}

#[test]
fn deep_vault_fast_path_needs_everyone_and_works_at_once() {
    let mut env = env();
    let (_, input) = deep_vault_coin(&mut env);
    let mut everyone = vec![Signer::Backup, Signer::Cosigner];
    everyone.extend((0..env.example.guardians).map(Signer::Guardian));
    let fast = SpendInput { sequence: Sequence::ENABLE_RBF_NO_LOCKTIME, ..input.clone() };
    // Without one guardian the fast path cannot be satisfied (and the slow one is not open).
    let short = &everyone[..everyone.len() - 1];
    let err = env.spend_with(fast.clone(), sink(), Amount::from_sat(1_000), short).unwrap_err();
    assert!(err.to_string().contains("ould not satisfy") || err.to_string().contains("atisf"), "{err}");
    let tx = env.spend_with(fast, sink(), Amount::from_sat(1_000), &everyone).unwrap();
    env.confirm(&tx).unwrap();
}

/// A witness for `leaf` of `descriptor` with the given signers' signatures in script order,
/// each signer given by its secret (or a wrong one), to show the kernel refusing it.
fn leaf_spend(
    tx: &mut Transaction,
    prevout: &TxOut,
    leaf_script: &ScriptBuf,
    control: &[u8],
    stack_top_first: &[Keypair],
) {
    let secp = Secp256k1::new();
    let leaf_hash = TapLeafHash::from_script(leaf_script, LeafVersion::TapScript);
    let sighash = SighashCache::new(&*tx)
        .taproot_script_spend_signature_hash(
            0,
            &Prevouts::All(&[prevout]),
            leaf_hash,
            TapSighashType::Default,
        )
        .unwrap();
    let msg = Message::from_digest(sighash.to_byte_array());
    let mut items: Vec<Vec<u8>> =
        stack_top_first.iter().rev().map(|k| secp.sign_schnorr(&msg, k).as_ref().to_vec()).collect();
    items.push(leaf_script.to_bytes());
    items.push(control.to_vec());
    tx.input[0].witness = Witness::from_slice(&items);
}

/// A vault whose U confirmed DELAY blocks ago, and its spend leaf (the second in U's tree:
/// `and_v(v:pk(owner),and_v(v:pk(cosigner),[guardians,]older(DELAY)))`).
fn past_delay(
    sat: u64,
    kind: VaultKind,
) -> (Env, Vault, ScriptBuf, vigil_policy::bitcoin::taproot::ControlBlock) {
    let mut env = env();
    let vault = env.create_vault(Amount::from_sat(sat), kind).unwrap();
    env.confirm(vault.graph.unvault()).unwrap();
    env.chain.mine(DELAY).unwrap();
    let (script, control) = taproot_leaves(&vault.descriptors.unvault).unwrap().swap_remove(1);
    (env, vault, script, control)
}

#[test]
fn spend_leaf_without_cosigner_and_wrong_keys_are_rejected_by_the_kernel() {
    let (mut env, vault, script, control) = past_delay(2_000_000, VaultKind::Standard);
    let script = &script;
    let owner = env.vault_keypair(Signer::Owner(0), vault.plan.index);
    let cosigner = env.vault_keypair(Signer::Cosigner, vault.plan.index);
    let guardian = env.vault_keypair(Signer::Guardian(0), vault.plan.index);
    let template = env.delayed_spend(&vault, sink(), Amount::from_sat(1_000)).unwrap();
    let prevout = vault.unvault_txout();

    let mut honest = template.clone();
    leaf_spend(&mut honest, &prevout, script, &control.serialize(), &[owner, cosigner]);
    env.chain.test_accept(&honest).unwrap();

    // The owner signs twice in place of the co-signer; a guardian stands in for the co-signer.
    for pair in [[owner, owner], [owner, guardian], [guardian, cosigner]] {
        let mut bad = template.clone();
        leaf_spend(&mut bad, &prevout, script, &control.serialize(), &pair);
        assert!(matches!(env.chain.test_accept(&bad), Err(SubmitError::Script { .. })));
        let err = env.chain.block().with_pending(false).with_transactions([bad]).mine().unwrap_err();
        assert!(
            err.to_string().contains("Invalid Schnorr signature") || err.to_string().contains("script"),
            "{err}"
        );
    }
    // A cancel signed by the everyday keys instead of the one-time keys is rejected too.
    let mut cancel = vault.graph.cancel(0).unwrap().clone();
    let once = &taproot_leaves(&vault.descriptors.unvault).unwrap()[0];
    leaf_spend(&mut cancel, &prevout, &once.0, &once.1.serialize(), &[owner, cosigner]);
    assert!(matches!(env.chain.test_accept(&cancel), Err(SubmitError::Script { .. })));
    env.confirm(&honest).unwrap();
}

#[test]
fn guarded_spend_leaf_without_guardians_is_rejected() {
    let (mut env, vault, script, control) = past_delay(20_000_000, VaultKind::Guarded);
    let script = &script;
    let owner = env.vault_keypair(Signer::Owner(0), vault.plan.index);
    let cosigner = env.vault_keypair(Signer::Cosigner, vault.plan.index);
    let mut tx = env.delayed_spend(&vault, sink(), Amount::from_sat(1_000)).unwrap();
    // Owner + co-signer alone: the guardians' multi_a gets no signatures.
    leaf_spend(&mut tx, &vault.unvault_txout(), script, &control.serialize(), &[owner, cosigner]);
    assert!(matches!(env.chain.test_accept(&tx), Err(SubmitError::Script { .. })));
    // Through the PSBT flow the leaf cannot even be finalized without them.
    let mut signers = env.owners();
    signers.push(Signer::Cosigner);
    let input = SpendInput {
        outpoint: vault.unvault_outpoint(),
        txout: vault.unvault_txout(),
        descriptor: vault.descriptors.unvault.clone(),
        sequence: Sequence::from_height(DELAY as u16),
    };
    assert!(env.spend_with(input, sink(), Amount::from_sat(1_000), &signers).is_err());
    let with_guardians = env.delayed_spend(&vault, sink(), Amount::from_sat(1_000)).unwrap();
    env.confirm(&with_guardians).unwrap();
}

#[test]
fn recovery_leaves_open_exactly_at_t_recover_without_the_cosigner() {
    let mut env = env();
    let mut signers = env.owners();
    signers.extend(env.guardian_quorum());
    let sequence = Sequence::from_height(RECOVERY as u16);

    // Intake.
    let coin = env.receive(Amount::from_sat(500_000)).unwrap();
    let created = env.chain.coin(&coin.outpoint).unwrap().height;
    let input = SpendInput {
        outpoint: coin.outpoint,
        txout: coin.txout.clone(),
        descriptor: env.compiled.intake_descriptor(coin.intake_index).unwrap(),
        sequence,
    };
    let tx = env.spend_with(input, sink(), Amount::from_sat(1_000), &signers).unwrap();
    refused_early_then_mined_at(&mut env.chain, &tx, created + RECOVERY);

    // A funding's change (on the change branch in format 2).
    let vault = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Standard).unwrap();
    let change = env.change_of(&vault).expect("the funding's change");
    let created = env.chain.coin(&change.outpoint).unwrap().height;
    let input = SpendInput {
        outpoint: change.outpoint,
        txout: change.txout.clone(),
        descriptor: env.compiled.intake_descriptor_on(change.intake_index, change.change).unwrap(),
        sequence,
    };
    let tx = env.spend_with(input, sink(), Amount::from_sat(500), &signers).unwrap();
    refused_early_then_mined_at(&mut env.chain, &tx, created + RECOVERY);

    // U.
    let vault = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Standard).unwrap();
    env.confirm(vault.graph.unvault()).unwrap();
    let created = confirmed_height(&env.chain, vault.graph.unvault());
    let input = SpendInput {
        outpoint: vault.unvault_outpoint(),
        txout: vault.unvault_txout(),
        descriptor: vault.descriptors.unvault.clone(),
        sequence,
    };
    let tx = env.spend_with(input, sink(), Amount::from_sat(1_000), &signers).unwrap();
    refused_early_then_mined_at(&mut env.chain, &tx, created + RECOVERY);

    // R (after a cancel).
    let vault = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Standard).unwrap();
    env.confirm(vault.graph.unvault()).unwrap();
    let cancel = vault.graph.cancel(0).unwrap().clone();
    env.confirm(&cancel).unwrap();
    let created = confirmed_height(&env.chain, &cancel);
    let input = SpendInput {
        outpoint: OutPoint { txid: cancel.compute_txid(), vout: 0 },
        txout: cancel.output[0].clone(),
        descriptor: vault.descriptors.recovery.clone(),
        sequence,
    };
    let tx = env.spend_with(input.clone(), sink(), Amount::from_sat(1_000), &signers).unwrap();
    refused_early_then_mined_at(&mut env.chain, &tx, created + RECOVERY);
}

#[test]
fn recovery_output_cooperative_leaf_needs_cosigner_and_guardians() {
    let mut env = env();
    let vault = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Standard).unwrap();
    env.confirm(vault.graph.unvault()).unwrap();
    let cancel = vault.graph.cancel(0).unwrap().clone();
    env.confirm(&cancel).unwrap();
    let input = SpendInput {
        outpoint: OutPoint { txid: cancel.compute_txid(), vout: 0 },
        txout: cancel.output[0].clone(),
        descriptor: vault.descriptors.recovery.clone(),
        sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
    };
    let mut signers = env.owners();
    signers.push(Signer::Cosigner);
    assert!(env.spend_with(input.clone(), sink(), Amount::from_sat(1_000), &signers).is_err());
    signers.extend(env.guardian_quorum());
    let tx = env.spend_with(input, sink(), Amount::from_sat(1_000), &signers).unwrap();
    env.confirm(&tx).unwrap();
}

#[test]
fn a_reorged_unvault_re_mined_still_takes_its_cancel() {
    let mut env = env();
    let vault = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Standard).unwrap();
    let fork = env.chain.tip();
    env.confirm(vault.graph.unvault()).unwrap();
    env.chain.mine(2).unwrap();
    // A heavier branch without U: U returns to the pending pool.
    let mut parent = fork;
    for _ in 0..4 {
        parent = env.chain.block().on(parent).with_pending(false).mine().unwrap().hash;
    }
    assert_eq!(env.chain.tip(), parent);
    assert_eq!(env.chain.tx_status(&vault.graph.unvault().compute_txid()), Some(TxStatus::Pending));
    env.chain.mine(1).unwrap();
    let u_height = confirmed_height(&env.chain, vault.graph.unvault());
    env.chain.mine(DELAY - 2).unwrap();
    env.confirm(vault.graph.cancel(2).unwrap()).unwrap();
    assert!(confirmed_height(&env.chain, vault.graph.cancel(2).unwrap()) < u_height + DELAY);
}

#[test]
fn every_signature_is_sighash_default_or_all() {
    let mut env = env();
    let vault = env.create_vault(Amount::from_sat(3_000_000), VaultKind::Guarded).unwrap();
    for p in vault.graph.transactions() {
        let witness = &p.tx.input[0].witness;
        // [cosigner sig, owner sig, script, control block]
        assert_eq!(witness.len(), 4, "{:?}", p.role);
        for sig in witness.iter().take(2) {
            let ok = sig.len() == 64 || (sig.len() == 65 && sig[64] == TapSighashType::All as u8);
            assert!(
                ok,
                "{:?} carries a signature of length {} (sighash byte {:?})",
                p.role,
                sig.len(),
                sig.get(64)
            );
        }
    }
    // The funding's signatures too: a script-path witness is [signatures.., script, control].
    for input in &vault.funding.input {
        let items: Vec<&[u8]> = input.witness.iter().collect();
        let sigs = &items[..items.len() - 2];
        assert!(!sigs.is_empty());
        assert!(sigs.iter().all(|s| s.len() == 64 || (s.len() == 65 && s[64] == 0x01)), "{sigs:?}");
    }
}

#[test]
fn one_time_secrets_never_reach_disk_or_any_returned_value() {
    let mut env = env();
    let owner_once = OneTimeKey::generate();
    let cosigner_once = OneTimeKey::generate();
    let secrets = [owner_once.secret_bytes_for_tests(), cosigner_once.secret_bytes_for_tests()];
    let vault = env
        .create_vault_with(Amount::from_sat(1_000_000), VaultKind::Standard, owner_once, cosigner_once)
        .unwrap();
    env.confirm(vault.graph.unvault()).unwrap();
    env.confirm(vault.graph.cancel(0).unwrap()).unwrap();

    let mut haystacks: Vec<Vec<u8>> = Vec::new();
    for p in vault.graph.transactions() {
        haystacks.push(vigil_policy::bitcoin::consensus::serialize(&p.tx));
        haystacks.push(vault.graph.psbt(p).unwrap().serialize());
    }
    haystacks.push(format!("{vault:?}").into_bytes());
    haystacks.push(vault.descriptors.unvault.to_string().into_bytes());
    let files = walk(env.chain.data_dir());
    assert!(files.iter().any(|f| f.to_string_lossy().contains("blk")), "the chain wrote its block files");
    for entry in files {
        haystacks.push(std::fs::read(entry).unwrap());
    }
    for secret in secrets {
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        for hay in &haystacks {
            assert!(!hay.windows(32).any(|w| w == secret), "raw secret found");
            assert!(!String::from_utf8_lossy(hay).contains(&hex), "hex secret found");
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_recovery_leaf_a_guardian_signs_is_the_one_in_every_recoverable_output() {
    let mut env = env();
    let v = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Guarded).unwrap();
    let scripts = env.compiled.recovery_leaf_scripts(v.plan.index).unwrap();
    let (intake_leaf, vault_leaf) = (scripts[0].clone(), scripts.last().unwrap().clone());
    let change = env.compiled.intake_descriptor_on(v.plan.index, true).ok();
    let leaves = |d| taproot_leaves(d).unwrap().into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    let intake = env.compiled.intake_descriptor(v.plan.index).unwrap();
    assert!(leaves(&intake).contains(&intake_leaf));
    // Format 2's change branch has its own keys, so its own recovery leaf.
    match &change {
        Some(change) => {
            assert_eq!(scripts.len(), 3);
            assert!(leaves(change).contains(&scripts[1]) && scripts[1] != intake_leaf);
        }
        None => assert_eq!(scripts.len(), 2),
    }
    assert!(leaves(&v.descriptors.unvault).contains(&vault_leaf));
    assert!(leaves(&v.descriptors.recovery).contains(&vault_leaf));
    // No other leaf of theirs (the co-signer's paths, the guarded spend) is a recovery leaf.
    let others = [leaves(&intake), leaves(&v.descriptors.unvault), leaves(&v.descriptors.recovery)].concat();
    assert_eq!(others.iter().filter(|s| **s == intake_leaf || **s == vault_leaf).count(), 3);
    assert!(leaves(&v.descriptors.deep_vault).iter().all(|s| *s != vault_leaf));
    assert_ne!(env.compiled.recovery_leaf_scripts(v.plan.index + 1).unwrap().last(), Some(&vault_leaf));
}

#[test]
fn a_fundings_change_funds_the_next_vault() {
    let mut env = env();
    let coin = env.receive(Amount::from_sat(3_000_000)).unwrap();
    let (owner_once, cosigner_once) = (OneTimeKey::generate(), OneTimeKey::generate());
    let first = env.create_vault_from(
        &[coin],
        Amount::from_sat(1_000_000),
        VaultKind::Standard,
        owner_once,
        cosigner_once,
    );
    let change = env.change_of(&first.unwrap()).expect("the funding's change");
    // Format 2's change is on the change branch (`/1/i`, `/5/i`), which a hardware signer
    // recognises as its own; format 1 has none, and uses a receive index.
    assert_eq!(change.change, env.compiled.has_change_branch());
    let on_receive = env.compiled.intake_descriptor(change.intake_index).unwrap().script_pubkey();
    assert_eq!(on_receive == change.txout.script_pubkey, !env.compiled.has_change_branch());
    if change.change {
        let text = env.compiled.intake_descriptor_on(change.intake_index, true).unwrap().to_string();
        let at = |branch: u32| format!("/{branch}/{}]", change.intake_index);
        assert!(text.contains(&at(1)) && text.contains(&at(5)) && !text.contains(&at(0)), "{text}");
    }
    // The change funds a vault (its funding accepted by the kernel), and that vault's graph
    // holds as any other's.
    let (owner_once, cosigner_once) = (OneTimeKey::generate(), OneTimeKey::generate());
    let second = env
        .create_vault_from(
            &[change],
            Amount::from_sat(1_000_000),
            VaultKind::Standard,
            owner_once,
            cosigner_once,
        )
        .unwrap();
    env.confirm(second.graph.unvault()).unwrap();
    let cancel = second.graph.cancel(0).unwrap().clone();
    env.confirm(&cancel).unwrap();
}

#[test]
fn the_deep_vault_leaves_are_those_of_the_output_e_pays() {
    let mut env = env();
    let v = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Standard).unwrap();
    let d = env.compiled.deep_vault_descriptor(v.plan.index).unwrap();
    assert_eq!(d.script_pubkey(), v.descriptors.deep_vault.script_pubkey());
    assert_eq!(v.graph.emergency(0).unwrap().output[0].script_pubkey, d.script_pubkey());
    let leaves = env.compiled.deep_vault_leaves(v.plan.index).unwrap();
    let scripts: Vec<ScriptBuf> = taproot_leaves(&d).unwrap().into_iter().map(|(s, _)| s).collect();
    assert!(scripts.contains(&leaves.fast) && scripts.contains(&leaves.slow) && leaves.fast != leaves.slow);
    assert_eq!(leaves.fast_signers.len(), 1 + env.example.guardians);
}

#[test]
fn only_the_owners_valid_spend_signatures_are_counted_and_returned() {
    let (env, vault, script, _) = past_delay(2_000_000, VaultKind::Standard);
    let input = SpendInput {
        outpoint: vault.unvault_outpoint(),
        txout: vault.unvault_txout(),
        descriptor: vault.descriptors.unvault.clone(),
        sequence: Sequence::from_height(DELAY as u16),
    };
    let out = TxOut { value: Amount::from_sat(1_000_000), script_pubkey: sink() };
    let mut psbt = vigil_policy::spend_psbt(&[input], vec![out]).unwrap();
    env.sign(&mut psbt, &[Signer::Owner(0), Signer::Cosigner]);
    let owner = env.vault_keypair(Signer::Owner(0), vault.plan.index).x_only_public_key().0;
    let leaf = TapLeafHash::from_script(&script, LeafVersion::TapScript);
    let genuine = psbt.inputs[0].tap_script_sigs[&(owner, leaf)];
    // A signature filed under the owner's key for a leaf the output does not have.
    let elsewhere = TapLeafHash::from_byte_array([7; 32]);
    psbt.inputs[0].tap_script_sigs.insert((owner, elsewhere), genuine);
    assert!(psbt.inputs[0].tap_script_sigs.len() >= 3);

    let found = env.compiled.owner_spend_signatures(&vault.plan, &psbt, 0).unwrap();
    assert!(found.enough());
    assert_eq!(found.valid, vec![((owner, leaf), genuine)], "only the owner's, on the spend leaf");

    // The owner's signature tampered with: nothing valid, below the threshold.
    let mut bad = genuine;
    bad.signature = vigil_policy::bitcoin::secp256k1::schnorr::Signature::from_slice(&[1; 64]).unwrap();
    psbt.inputs[0].tap_script_sigs.insert((owner, leaf), bad);
    let found = env.compiled.owner_spend_signatures(&vault.plan, &psbt, 0).unwrap();
    assert!(found.valid.is_empty() && !found.enough());
}
