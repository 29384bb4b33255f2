//! Random valid policies: every graph built and checked against the kernel.
//!
//! Cases with a delay a test can mine quickly (and an amount regtest's coinbases can pay) are
//! mined on the embedded chain; the rest go through the kernel's script verification with the
//! real spent output (any amount up to 21 M BTC, which regtest's ~15,000 BTC supply cannot
//! mint), checking the spend leaf against nSequence = DELAY and DELAY - 1.
//! `VIGIL_PROPTEST_CASES` sets the number of cases (default 100; 1,000 for a long run).
//! Failures are recorded in `property.proptest-regressions`, kept in the repo.

use proptest::prelude::*;
use vigil_policy::bitcoin::hashes::Hash;
use vigil_policy::bitcoin::{Amount, OutPoint, Psbt, ScriptBuf, Sequence, Transaction, TxOut, Txid};
use vigil_policy::example::ExamplePolicy;
use vigil_policy::miniscript::psbt::PsbtExt;
use vigil_policy::{spend_psbt, OneTimeKey, SpendInput, VaultKind};
use vigil_regtest::SubmitError;
use vigil_testenv::{force_leaf_witness, Env, Signer};

/// Delays up to this are mined.
const MINED_DELAY: u32 = 40;
/// Amounts up to this are mined (regtest's first coinbases pay 50 BTC each).
const MINED_AMOUNT: u64 = 40 * 100_000_000;

fn kernel_verifies(tx: &Transaction, prevout: &TxOut) -> bool {
    vigil_regtest::kernel::verify_inputs(tx, std::slice::from_ref(prevout)).is_ok()
}

fn sink() -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&vigil_policy::bitcoin::WPubkeyHash::all_zeros())
}

#[derive(Debug, Clone)]
struct Case {
    example: ExamplePolicy,
    amount_fraction: f64,
    guarded: bool,
}

fn ladders() -> Vec<Vec<u64>> {
    vec![
        vec![1],
        vec![1, 2, 5, 10, 25, 50, 100, 250],
        vec![3, 30, 300],
        vec![2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048],
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..=3,
        1usize..=5,
        prop_oneof![3 => 1u32..=MINED_DELAY, 2 => 1u32..=65_535],
        0u32..=65_535,
        0u32..=65_535,
    )
        .prop_flat_map(|(owners, guardians, delay, r, l)| {
            (
                (
                    Just(owners),
                    1u32..=owners as u32,
                    Just(guardians),
                    1u32..=guardians as u32,
                    Just(delay),
                    Just(delay + r % (65_536 - delay)),
                    Just(delay + l % (65_536 - delay)),
                ),
                (0usize..4, 1u64..=20, 1u64..=20, 0.0f64..1.0, any::<bool>(), any::<u16>()),
            )
        })
        .prop_map(
            |(
                (owners, ot, guardians, gt, delay, recovery, long),
                (ladder, unvault_rate, pct, frac, guarded, seed),
            )| {
                let mined = delay <= MINED_DELAY;
                Case {
                    example: ExamplePolicy {
                        seed: format!("property {seed}"),
                        owners,
                        owner_threshold: ot,
                        guardians,
                        guardian_threshold: gt,
                        delay,
                        // Mined cases keep the recovery and deep-vault locks minable too.
                        recovery: if mined { delay + recovery % 20 } else { recovery },
                        deep_vault: if mined { delay + long % 20 } else { long },
                        unvault_sat_per_vb: unvault_rate,
                        ladder_sat_per_vb: ladders()[ladder].clone(),
                        max_fee_percent: pct,
                        velocity_limit_sat: 10_000_000,
                        towers: 1,
                        // Both key formats (ADR 0005), half the cases each.
                        format: 1 + u32::from(seed % 2),
                        services: Default::default(),
                    },
                    amount_fraction: frac,
                    guarded,
                }
            },
        )
}

/// An amount between the policy's minimum and `max`, spread over orders of magnitude.
fn amount(min: Amount, max: u64, fraction: f64) -> Amount {
    let (lo, hi) = ((min.to_sat() as f64).ln(), (max as f64).ln());
    Amount::from_sat(((lo + (hi - lo) * fraction).exp() as u64).clamp(min.to_sat(), max))
}

fn check_mined(case: &Case) -> Result<(), TestCaseError> {
    let mut env = Env::new(case.example.clone()).unwrap();
    let kind = if case.guarded { VaultKind::Guarded } else { VaultKind::Standard };
    let max = if kind == VaultKind::Standard { case.example.velocity_limit_sat } else { MINED_AMOUNT };
    let amount = amount(env.compiled.min_vault_amount(), max, case.amount_fraction);
    let delay = case.example.delay;

    // Vault 1: U, then the spend refused at DELAY - 1 and accepted at DELAY; C and UE valid
    // throughout (checked in the pool, which runs the kernel's script verification).
    let v = env.create_vault(amount, kind).unwrap();
    env.confirm(v.graph.unvault()).unwrap();
    let u_height = env.chain.height();
    let spend = env
        .delayed_spend(&v, sink(), Amount::from_sat(300))
        .map(Some)
        .or_else(|e| {
            // The whole unvault output may be too small for a 300 sat fee and a non-dust output.
            if v.unvault_txout().value.to_sat() < 1_000 {
                Ok(None)
            } else {
                Err(e)
            }
        })
        .unwrap();
    // The last block before DELAY: the spend must wait, C and UE must not.
    env.chain.mine_to_height(u_height + delay.saturating_sub(2)).unwrap();
    for c in v.graph.graph().cancels.iter().chain(&v.graph.graph().unvault_emergencies) {
        env.chain.test_accept(&c.tx).unwrap();
    }
    if let Some(spend) = &spend {
        if delay >= 2 {
            let early = env.chain.test_accept(spend);
            prop_assert!(
                matches!(early, Err(SubmitError::SequenceLock { .. })),
                "spend at DELAY - 1: {:?}",
                early
            );
        }
        env.chain.mine_to_height(u_height + delay - 1).unwrap();
        env.confirm(spend).unwrap();
        prop_assert_eq!(env.chain.height(), u_height + delay);
    }

    // Vault 2: E mined; vault 3: U then C mined; vault 4: U then UE mined, highest rungs.
    let v = env.create_vault(amount, kind).unwrap();
    env.confirm(v.graph.emergency(v.graph.graph().emergencies.len() - 1).unwrap()).unwrap();
    let v = env.create_vault(amount, kind).unwrap();
    env.confirm(v.graph.unvault()).unwrap();
    env.confirm(v.graph.cancel(v.graph.graph().cancels.len() - 1).unwrap()).unwrap();
    let v = env.create_vault(amount, kind).unwrap();
    env.confirm(v.graph.unvault()).unwrap();
    env.confirm(v.graph.unvault_emergency(0).unwrap()).unwrap();
    Ok(())
}

fn check_verified(case: &Case) -> Result<(), TestCaseError> {
    let env =
        Env::with_chain(vigil_regtest::RegtestChain::new_temporary().unwrap(), case.example.clone()).unwrap();
    let kind = if case.guarded { VaultKind::Guarded } else { VaultKind::Standard };
    let max = if kind == VaultKind::Standard {
        case.example.velocity_limit_sat
    } else {
        Amount::MAX_MONEY.to_sat()
    };
    let amount = amount(env.compiled.min_vault_amount(), max, case.amount_fraction);
    let (o, c) = (OneTimeKey::generate(), OneTimeKey::generate());
    let plan = env.compiled.plan(3, amount, kind, o.public(), c.public()).unwrap();
    let v = OutPoint { txid: Txid::from_byte_array([7; 32]), vout: 0 };
    let graph = env.compiled.build_graph(&plan, v).unwrap();
    let signed = graph.finalize(&o.sign(&graph).unwrap(), &c.sign(&graph).unwrap()).unwrap();
    for p in signed.transactions() {
        prop_assert!(kernel_verifies(&p.tx, &p.prevout), "{:?} at {} sat/vB", p.role, p.feerate_sat_per_vb);
        prop_assert!(p.tx.output[0].value.to_sat() >= 330);
    }

    // Vigil fills a taproot PSBT input itself: exactly what miniscript fills, for every
    // output a PSBT spends (the vault's four and the intake's).
    let descriptors = env.compiled.vault_descriptors(&plan).unwrap();
    prop_assert_eq!(env.compiled.unvault_descriptor(&plan).unwrap(), descriptors.unvault.clone());
    let intake = env.compiled.intake_descriptor(3).unwrap();
    for d in
        [&descriptors.vault, &descriptors.unvault, &descriptors.recovery, &descriptors.deep_vault, &intake]
    {
        let txout = TxOut { value: amount, script_pubkey: d.script_pubkey() };
        let input =
            SpendInput { outpoint: v, txout: txout.clone(), descriptor: d.clone(), sequence: Sequence::ZERO };
        let ours = spend_psbt(&[input], vec![TxOut { value: amount, script_pubkey: sink() }]).unwrap();
        let mut theirs = Psbt::from_unsigned_tx(ours.unsigned_tx.clone()).unwrap();
        theirs.inputs[0].witness_utxo = Some(txout);
        theirs.update_input_with_descriptor(0, d).unwrap();
        prop_assert_eq!(ours, theirs, "{}", d);
    }

    // The spend leaf against nSequence: DELAY passes the script, DELAY - 1 fails CSV.
    let u_out = signed.unvault().output[0].clone();
    let u_outpoint = OutPoint { txid: signed.unvault().compute_txid(), vout: 0 };
    let mut keys: Vec<_> = env.owners().into_iter().map(|s| env.vault_keypair(s, 3)).collect();
    keys.push(env.vault_keypair(Signer::Cosigner, 3));
    if kind == VaultKind::Guarded {
        keys.extend(env.guardian_quorum().into_iter().map(|s| env.vault_keypair(s, 3)));
    }
    for (sequence, ok) in [(case.example.delay, true), (case.example.delay - 1, false)] {
        if sequence == 0 {
            continue;
        }
        let input = SpendInput {
            outpoint: u_outpoint,
            txout: u_out.clone(),
            descriptor: descriptors.unvault.clone(),
            sequence: Sequence::from_height(sequence as u16),
        };
        let value = u_out.value.to_sat().saturating_sub(300).max(330);
        let mut tx =
            spend_psbt(&[input], vec![TxOut { value: Amount::from_sat(value), script_pubkey: sink() }])
                .unwrap()
                .unsigned_tx;
        force_leaf_witness(&mut tx, &u_out, &descriptors.unvault, 1, &keys).unwrap();
        prop_assert_eq!(kernel_verifies(&tx, &u_out), ok, "spend with nSequence {}", sequence);
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("VIGIL_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn random_policies_build_graphs_the_kernel_accepts(case in case()) {
        let mined = case.example.delay <= MINED_DELAY;
        if mined {
            check_mined(&case)?;
        }
        check_verified(&case)?;
    }
}

/// At least one mined case of a few thousand blocks.
#[test]
fn a_delay_of_3000_blocks_mined_on_the_kernel() {
    let example =
        ExamplePolicy { delay: 3_000, recovery: 3_100, deep_vault: 3_100, ..ExamplePolicy::default() };
    let mut env = Env::new(example).unwrap();
    let v = env.create_vault(Amount::from_sat(1_000_000), VaultKind::Standard).unwrap();
    env.confirm(v.graph.unvault()).unwrap();
    let u_height = env.chain.height();
    let spend = env.delayed_spend(&v, sink(), Amount::from_sat(1_000)).unwrap();
    env.chain.mine_to_height(u_height + 3_000 - 2).unwrap();
    assert!(matches!(env.chain.submit(&spend), Err(SubmitError::SequenceLock { .. })));
    let err = env.chain.block().with_pending(false).with_transactions([spend.clone()]).mine().unwrap_err();
    assert!(err.to_string().contains("BIP68") || err.to_string().contains("nonfinal"), "{err}");
    env.chain.mine(1).unwrap();
    env.confirm(&spend).unwrap();
    assert_eq!(env.chain.height(), u_height + 3_000);
    let _ = Signer::Backup;
}
