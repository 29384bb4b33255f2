//! `vigil demo`: vaults built with the example policy's keys on a kept embedded chain, walked
//! through unvault -> cancel, unvault -> delayed spend, emergency -> deep vault. Every
//! transaction is accepted (or refused) by Bitcoin Core's validation engine.

use std::path::Path;

use anyhow::Context;
use vigil_client::{Ceremony, Vault};
use vigil_policy::bitcoin::hashes::Hash;
use vigil_policy::bitcoin::{Amount, ScriptBuf, Sequence, Transaction, TxOut, WPubkeyHash};
use vigil_policy::example::{ExampleKeys, ExamplePolicy, Signer};
use vigil_policy::{
    finalize, spend_psbt, CompiledPolicy, FundingInput, OneTimeKey, Policy, SpendInput, VaultKind,
};
use vigil_regtest::RegtestChain;

/// The demo's household on the embedded chain.
struct Demo {
    chain: RegtestChain,
    example: ExamplePolicy,
    keys: ExampleKeys,
    compiled: CompiledPolicy,
    /// The next unused intake and vault index (a kept chain must never reuse one).
    next_index: u32,
}

impl Demo {
    /// Receives `amount` + a fee margin at a fresh intake address, then runs the ceremony
    /// and confirms the funding.
    fn create_vault(&mut self, amount: Amount, kind: VaultKind) -> anyhow::Result<Vault> {
        let (intake, change, index) = (self.next_index, self.next_index + 1, self.next_index);
        self.next_index += 2;
        let script = self.compiled.intake_descriptor(intake)?.script_pubkey();
        let outpoint = self.chain.fund_confirmed(&script, amount + Amount::from_sat(10_000))?;
        let txout = self.chain.coin(&outpoint).context("the faucet's coin")?.txout;
        let coin = FundingInput { outpoint, txout, intake_index: intake, change: false };
        let mut signers: Vec<Signer> =
            (0..self.example.owner_threshold as usize).map(Signer::Owner).collect();
        signers.push(Signer::Cosigner);
        let ceremony = Ceremony {
            compiled: &self.compiled,
            coins: std::slice::from_ref(&coin),
            index,
            change: vigil_policy::ChangeTo { index: change, change_branch: false },
            amount,
            kind,
            funding_sat_per_vb: 2,
        };
        let keys = &self.keys;
        let vault = ceremony
            .run(
                OneTimeKey::generate(),
                OneTimeKey::generate(),
                &mut |psbt| keys.sign_psbt(psbt, &signers),
                &mut vigil_client::no_towers,
            )
            .map_err(vigil_policy::PolicyError::from)?;
        self.confirm(&vault.funding)?;
        let g = vault.graph.graph();
        println!(
            "   vault #{} ({kind:?}, {amount}): V {} funded; graph signed by one-time keys, keys wiped before funding",
            vault.plan.index,
            vault.outpoint()
        );
        println!(
            "   pre-signed: U {}, {} cancels, {} emergencies, {} unvault-emergencies ({}..{} sat/vB)",
            g.unvault_txid(),
            g.cancels.len(),
            g.emergencies.len(),
            g.unvault_emergencies.len(),
            g.cancels.first().map(|c| c.feerate_sat_per_vb).unwrap_or(0),
            g.cancels.last().map(|c| c.feerate_sat_per_vb).unwrap_or(0)
        );
        Ok(vault)
    }

    /// The owner's spend of U's spend leaf after DELAY (owner + co-signer, and the guardian
    /// quorum for a guarded vault).
    fn delayed_spend(&self, vault: &Vault, to: ScriptBuf, fee: Amount) -> anyhow::Result<Transaction> {
        let input = SpendInput {
            outpoint: vault.unvault_outpoint(),
            txout: vault.unvault_txout(),
            descriptor: vault.descriptors.unvault.clone(),
            sequence: Sequence::from_height(self.example.delay as u16),
        };
        let value = input.txout.value - fee;
        let mut psbt = spend_psbt(&[input], vec![TxOut { value, script_pubkey: to }])?;
        let mut signers: Vec<Signer> =
            (0..self.example.owner_threshold as usize).map(Signer::Owner).collect();
        signers.push(Signer::Cosigner);
        if vault.plan.kind == VaultKind::Guarded {
            signers.extend((0..self.example.guardian_threshold as usize).map(Signer::Guardian));
        }
        self.keys.sign_psbt(&mut psbt, &signers);
        Ok(finalize(psbt)?)
    }

    fn confirm(&mut self, tx: &Transaction) -> anyhow::Result<()> {
        self.chain.submit(tx)?;
        self.chain.mine(1)?;
        Ok(())
    }
}

fn step(title: &str) {
    println!();
    println!("{title}");
}

/// Runs the demo on the chain kept in `datadir`.
pub fn run(datadir: &Path) -> anyhow::Result<()> {
    let example = ExamplePolicy::default();
    println!("Vigil demo on the embedded regtest chain (Bitcoin Core's validation engine, in-process)");
    println!("policy: the example regtest policy (vigil policy example), DELAY {} blocks", example.delay);
    let chain =
        RegtestChain::open(datadir).with_context(|| format!("opening the chain in {}", datadir.display()))?;
    println!("chain: {} at height {}", datadir.display(), chain.height());
    let compiled = CompiledPolicy::new(Policy::from_toml(&example.to_toml())?)?;
    // Fresh derivation indices on every run, so no address is reused on a kept chain.
    let next_index = chain.height() * 8;
    let mut demo = Demo { chain, keys: example.keys(), example: example.clone(), compiled, next_index };
    let sink = ScriptBuf::new_p2wpkh(&WPubkeyHash::from_raw_hash(Hash::hash(b"demo destination")));

    step("1. unvault -> cancel");
    let vault = demo.create_vault(Amount::from_sat(5_000_000), VaultKind::Standard)?;
    let u = vault.graph.unvault().clone();
    demo.confirm(&u)?;
    println!(
        "   U {} confirmed at height {} (an unvault nobody approved)",
        u.compute_txid(),
        demo.chain.height()
    );
    let c = vault.graph.cancel(0).context("rung 0")?.clone();
    demo.confirm(&c)?;
    println!(
        "   C {} ({} sat/vB) confirmed: the coins are back in recovery output {}",
        c.compute_txid(),
        vault.graph.graph().cancels[0].feerate_sat_per_vb,
        c.output[0].value
    );

    step("2. unvault -> delayed spend");
    let vault = demo.create_vault(Amount::from_sat(5_000_000), VaultKind::Standard)?;
    let u = vault.graph.unvault().clone();
    demo.confirm(&u)?;
    let u_height = demo.chain.height();
    println!("   U {} confirmed at height {u_height}", u.compute_txid());
    let spend = demo.delayed_spend(&vault, sink.clone(), Amount::from_sat(2_000))?;
    demo.chain.mine_to_height(u_height + example.delay - 2)?;
    match demo.chain.submit(&spend) {
        Err(e) => println!("   spend at height {}: refused, {e}", demo.chain.height() + 1),
        Ok(_) => anyhow::bail!("the delayed spend was accepted before DELAY"),
    }
    demo.chain.mine(1)?;
    demo.confirm(&spend)?;
    println!("   spend {} confirmed at height {} = U + DELAY", spend.compute_txid(), demo.chain.height());

    step("3. emergency -> deep vault");
    let vault = demo.create_vault(Amount::from_sat(20_000_000), VaultKind::Guarded)?;
    let e = vault.graph.emergency(0).context("rung 0")?.clone();
    demo.confirm(&e)?;
    println!("   E {} confirmed: {} now in the deep vault", e.compute_txid(), e.output[0].value);
    println!(
        "   the deep vault opens to backup + {} guardians after {} blocks, or to everyone at once",
        example.guardian_threshold, example.deep_vault
    );

    println!();
    println!(
        "done: every transaction above was accepted by the kernel; chain height {}",
        demo.chain.height()
    );
    Ok(())
}
