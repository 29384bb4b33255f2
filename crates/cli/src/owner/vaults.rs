//! `vigil vault` and `vigil spend`: into vaults and out of them, each step recorded before
//! the next so that a run killed anywhere is finished by the next.

use super::*;

/// `vigil vault`.
#[derive(Args)]
pub struct VaultArgs {
    #[command(flatten)]
    wallet: WalletArgs,
    /// How much to put in the vault, in BTC (for example 0.05).
    #[arg(required_unless_present_any = ["signed", "resume"])]
    amount: Option<String>,
    /// A guarded vault: spending it always needs the guardians (amounts above the velocity
    /// limit always go to one).
    #[arg(long)]
    guarded: bool,
    /// Sign the funding on another device (a hardware signer) instead of asking for the
    /// phrase: its PSBT is written to FILE, to come back within 10 minutes with --signed.
    #[arg(long, value_name = "FILE")]
    sign_elsewhere: Option<PathBuf>,
    /// Take back the funding PSBT signed elsewhere and finish that vault.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["amount", "guarded", "sign_elsewhere"])]
    signed: Option<PathBuf>,
    /// Show the funding of the vault under way on the wallet's hardware signer again (after
    /// it was rejected there, or the device went away) and finish that vault.
    #[arg(long, conflicts_with_all = ["amount", "guarded", "sign_elsewhere", "signed"])]
    resume: bool,
}

fn record_of(vault: &vigil_client::Vault, version: u32, once_xpubs: Option<[String; 2]>) -> VaultRecord {
    VaultRecord {
        outpoint: vault.outpoint(),
        amount_sat: vault.plan.amount.to_sat(),
        kind: vault.plan.kind.name().into(),
        index: vault.plan.index,
        funding: serialize_hex(&vault.funding),
        confirmed_height: None,
        unvault: serialize_hex(vault.graph.unvault()),
        owner_once: vault.plan.owner_once.to_string(),
        cosigner_once: vault.plan.cosigner_once.to_string(),
        once_xpubs,
        unvaulted: false,
        policy_version: Some(version),
    }
}

/// A ceremony an interruption left between sending the owner's half and recording the vault:
/// the co-signer says whether it holds it. Returns the vault finished, or none (nothing was
/// funded: the record is dropped); refuses while the towers are still being told.
fn finish_pending(session: &Session, state: &mut WalletState) -> anyhow::Result<Option<vigil_client::Vault>> {
    let Some(p) = state.pending_vault.clone() else { return Ok(None) };
    let status: wire::VaultStatus = match session.cosigner.get(&format!("/v1/vaults/{}", p.outpoint)) {
        Ok(status) => status,
        Err(ClientError::Refused { status: 404, .. }) => {
            state.pending_vault = None;
            state.note(format!("the interrupted vault {} was never made: its coins are free", p.outpoint));
            return Ok(None);
        }
        Err(e) => {
            bail!("a vault interrupted earlier cannot be checked with the co-signer ({e}); nothing was done")
        }
    };
    if status.state != "protected" {
        bail!(
            "the vault interrupted earlier is still being registered with the watchtowers; try again later"
        );
    }
    let plan = p.record().plan().context("the interrupted vault's record is damaged")?;
    let mine = vaulting::signatures_from_hex(plan.owner_once, &p.owner_signatures)?;
    let theirs = vaulting::signatures_from_hex(plan.cosigner_once, &p.cosigner_signatures)?;
    let unsigned = vigil_policy::bitcoin::consensus::encode::deserialize_hex(&p.unsigned_funding)?;
    let compiled = session.policies.version(p.policy_version)?;
    let vault = vaulting::rebuild(compiled, &plan, p.outpoint, &mine, &theirs, &status, &unsigned)?;
    state.vaults.push(record_of(&vault, compiled.policy().version, p.once_xpubs.clone()));
    state.pending_vault = None;
    state.note(format!("vault {} finished after an interruption", p.outpoint));
    Ok(Some(vault))
}

/// `vigil vault`: intake coins into a vault, in DESIGN §4's order; the funding is broadcast
/// last, once every tower holds the vault (the co-signer releases it only then). Each step is
/// recorded before the next, so a run killed anywhere is finished by the next.
pub fn vault(args: VaultArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.signed {
        let signed = super::recover::read_psbt(file)?;
        let session = open(&args.wallet)?;
        return finish_signed_elsewhere(&session, &args, |_, _| Ok(signed));
    }
    if args.resume {
        let session = open(&args.wallet)?;
        if !super::device::has_signer(&session.dir)? {
            bail!(
                "this wallet has no hardware signer: a vault signed elsewhere comes back with --signed FILE"
            );
        }
        return finish_signed_elsewhere(&session, &args, |unsigned, amount| {
            super::device::sign_funding(&session, unsigned, amount)
        });
    }
    let amount = parse_btc(args.amount.as_deref().unwrap_or_default())?;
    let session = open(&args.wallet)?;
    super::needs_current_policy(&session, "Vaulting")?;
    // A wallet whose vault key is on a device signs there, once the co-signer's half is in.
    let on_device = args.sign_elsewhere.is_none() && super::device::has_signer(&session.dir)?;
    // Above the velocity limit a vault is guarded: its spends always need the guardians.
    let velocity_limit = Amount::from_sat(session.current().policy().allowance.velocity_limit_sat);
    let kind = if args.guarded || amount > velocity_limit { VaultKind::Guarded } else { VaultKind::Standard };
    let chain = session.chain();
    let mut state = session.dir.state()?;
    if let Some(v) = finish_pending(&session, &mut state)? {
        say(&format!("Finished the vault of {} interrupted earlier.", btc(v.plan.amount.to_sat())));
    }
    session.dir.save_state(&state)?;
    state.scan(&session.policies, &*chain)?;
    // Fundings recorded but not yet seen on chain are sent again (a crash after the record,
    // before the broadcast).
    let mut in_flight = Vec::new();
    for v in state.vaults.iter().filter(|v| v.confirmed_height.is_none()) {
        let tx: vigil_policy::bitcoin::Transaction =
            vigil_policy::bitcoin::consensus::encode::deserialize_hex(&v.funding)?;
        let _ = chain.broadcast(&tx);
        in_flight.extend(tx.input.iter().map(|i| i.previous_output));
    }
    // Coins a funding not yet confirmed spends are not offered again.
    let coins: Vec<_> = state
        .spendable_coins(&session.policies)
        .into_iter()
        .filter(|c| !in_flight.contains(&c.outpoint))
        .collect();
    let min = session.current().min_vault_amount();
    if amount < min {
        bail!(
            "{} is below the smallest vault this policy can build ({}): nothing was done",
            btc(amount.to_sat()),
            btc(min.to_sat())
        );
    }
    // The coins, largest first, until they cover the amount and a fee margin. Coins of a
    // funding recorded but not yet confirmed are not offered again.
    let mut sorted = coins.clone();
    sorted.sort_by_key(|c| std::cmp::Reverse(c.txout.value));
    let margin = Amount::from_sat(5_000);
    let mut chosen = Vec::new();
    let mut total = Amount::ZERO;
    for c in sorted {
        if total >= amount + margin {
            break;
        }
        total += c.txout.value;
        chosen.push(c);
    }
    if total < amount + margin {
        bail!(
            "not enough coins waiting to be vaulted: {} available, {} needed with fees; nothing was done",
            btc(coins.iter().map(|c| c.txout.value.to_sat()).sum()),
            btc((amount + margin).to_sat())
        );
    }
    // The device is checked for the accounts of these coins before an index is taken or the
    // co-signer asked.
    if on_device {
        let outpoints: Vec<_> = chosen.iter().map(|c| c.outpoint).collect();
        super::device::ready_to_fund(&session, &state, &outpoints)?;
    }
    let index = state.next_vault;
    // Both indexes are taken before anything is signed: a crash never reuses them.
    let change = state.take_change_index(session.current());
    state.next_vault += 1;
    session.dir.save_state(&state)?;
    say("Building the vault with your co-signer; every watchtower must confirm it holds it...");
    let earlier = session.policies.earlier();
    let order = VaultOrder {
        compiled: session.current(),
        earlier: &earlier,
        coins: &chosen,
        index,
        change,
        amount,
        kind,
        funding_sat_per_vb: 2,
    };
    let key = match args.sign_elsewhere {
        None if !on_device => Some(vault_key(&session)?),
        _ => None,
    };
    let (once, begun) = vaulting::begin(&session.cosigner, &order)?;
    let sign = |psbt: &mut vigil_policy::bitcoin::psbt::Psbt| {
        if let Some(key) = &key {
            key.sign_psbt(psbt)
        }
    };
    let prepared = vaulting::prepare(&order, once, &begun, &sign)?;
    let unsigned_psbt = (args.sign_elsewhere.is_some() || on_device).then(|| base64_psbt(&prepared.funding));
    // Recorded before it is sent: if this run dies after the co-signer took it, the next one
    // finishes it (the one-time key is gone; its signatures are all that is needed).
    state.pending_vault = Some(PendingVault {
        outpoint: prepared.outpoint,
        index,
        amount_sat: amount.to_sat(),
        kind: kind.name().into(),
        owner_once: prepared.plan.owner_once.to_string(),
        cosigner_once: prepared.plan.cosigner_once.to_string(),
        once_xpubs: prepared.once_xpubs.clone(),
        owner_signatures: vaulting::signatures_hex(&prepared.mine),
        cosigner_signatures: vaulting::signatures_hex(&prepared.theirs),
        unsigned_funding: serialize_hex(&prepared.funding.unsigned_tx),
        unsigned_psbt: unsigned_psbt.clone(),
        policy_version: Some(session.current().policy().version),
    });
    session.dir.save_state(&state)?;
    if let (Some(file), Some(psbt)) = (&args.sign_elsewhere, unsigned_psbt) {
        std::fs::write(file, psbt).with_context(|| format!("writing {}", file.display()))?;
        if args.wallet.json {
            println!(
                "{}",
                json!({"vault": prepared.outpoint.to_string(), "amount_sat": amount.to_sat(), "kind": kind.name(),
                       "state": "waiting for the owner's signature", "psbt": file.display().to_string()})
            );
        } else {
            println!(
                "The vault's funding PSBT is in {}: sign it with your signer (check that it moves {}",
                file.display(),
                btc(amount.to_sat())
            );
            println!("into your vault), then run `vigil vault --signed FILE` within 10 minutes.");
        }
        return Ok(());
    }
    if on_device {
        // Recorded as waiting for a signature first: a rejection or an unplugged device leaves
        // it resumable with --resume (for the ceremony's 10 minutes), nothing half-done.
        return finish_signed_elsewhere(&session, &args, |unsigned, amount| {
            super::device::sign_funding(&session, unsigned, amount)
        });
    }
    let version = Some(session.current().policy().version);
    send_and_broadcast(&session, &mut state, &prepared, version, &args.wallet)
}

fn base64_psbt(psbt: &vigil_policy::bitcoin::psbt::Psbt) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(psbt.serialize())
}

/// The funding of the vault waiting for a signature (begun with --sign-elsewhere, or on a
/// device), signed by `sign` (given the unsigned PSBT and the vault's amount): checked, then
/// the vault is finished. `vigil vault --signed FILE` and the device's path.
fn finish_signed_elsewhere(
    session: &Session,
    args: &VaultArgs,
    sign: impl FnOnce(
        &vigil_policy::bitcoin::psbt::Psbt,
        Amount,
    ) -> anyhow::Result<vigil_policy::bitcoin::psbt::Psbt>,
) -> anyhow::Result<()> {
    super::needs_current_policy(session, "Vaulting")?;
    let mut state = session.dir.state()?;
    let Some(pending) = state.pending_vault.clone() else {
        bail!(
            "no vault is waiting for a signature: begin one with `vigil vault AMOUNT --sign-elsewhere FILE`"
        );
    };
    let Some(unsigned) = &pending.unsigned_psbt else {
        bail!("the vault under way was signed on this device already: run `vigil vault` to finish it");
    };
    use base64::Engine as _;
    let unsigned = vigil_policy::bitcoin::psbt::Psbt::deserialize(
        &base64::engine::general_purpose::STANDARD.decode(unsigned)?,
    )
    .context("the waiting vault's record is damaged")?;
    let plan = pending.record().plan().context("the waiting vault's record is damaged")?;
    own_funding(session, &state, &pending, &plan, &unsigned)?;
    let signed = sign(&unsigned, Amount::from_sat(pending.amount_sat))?;
    // The coins it spends, in the transaction's order, as the policy checks them.
    let free = state.spendable_coins(&session.policies);
    let coins: Vec<_> = unsigned
        .unsigned_tx
        .input
        .iter()
        .filter_map(|i| free.iter().find(|c| c.outpoint == i.previous_output).cloned())
        .collect();
    let compiled = session.policies.version(pending.policy_version)?;
    let others: Vec<_> =
        session.policies.known().filter(|c| c.policy().version != compiled.policy().version).collect();
    let funding = vaulting::take_signed_funding(compiled, &others, &coins, &unsigned, &signed)
        .map_err(|e| anyhow::anyhow!("{e}; nothing was done"))?;
    let prepared = vaulting::Prepared {
        mine: vaulting::signatures_from_hex(plan.owner_once, &pending.owner_signatures)?,
        theirs: vaulting::signatures_from_hex(plan.cosigner_once, &pending.cosigner_signatures)?,
        plan,
        outpoint: pending.outpoint,
        funding,
        once_xpubs: pending.once_xpubs.clone(),
    };
    // From here on it is an ordinary ceremony whose owner's half is about to be sent.
    if let Some(p) = state.pending_vault.as_mut() {
        p.unsigned_psbt = None;
    }
    session.dir.save_state(&state)?;
    say("Sending your half to the co-signer; every watchtower must confirm it holds the vault...");
    send_and_broadcast(session, &mut state, &prepared, pending.policy_version, &args.wallet)
}

/// The spend at `pos`, waiting for the owner's signature, signed on the wallet's device and
/// checked (only the owner's valid signatures on the spend leaf are kept).
fn sign_spend_on_device(session: &Session, state: &mut WalletState, pos: usize) -> anyhow::Result<()> {
    use base64::Engine as _;
    let spend = state.spends[pos].clone();
    let psbt = vigil_policy::bitcoin::psbt::Psbt::deserialize(
        &base64::engine::general_purpose::STANDARD.decode(&spend.psbt)?,
    )
    .context("the spend's record is damaged")?;
    let record = state
        .vaults
        .iter()
        .find(|v| v.outpoint == spend.vault)
        .context("the spend's vault is not in this wallet")?;
    own_spend(session, state, &spend, &psbt)?;
    let signed = super::device::sign_spend(
        session,
        record,
        &psbt,
        &spend.destination,
        Amount::from_sat(spend.amount_sat),
    )?;
    spending::take_signed(session, state, &signed)?;
    session.dir.save_state(state)?;
    Ok(())
}

/// Refuses a waiting spend this wallet did not build itself before anything signs it: it pays
/// the recorded destination and amount first, and its only other output (change) is one of
/// this wallet's intake addresses.
fn own_spend(
    session: &Session,
    state: &WalletState,
    spend: &vigil_client::wallet::PendingSpend,
    psbt: &vigil_policy::bitcoin::psbt::Psbt,
) -> anyhow::Result<()> {
    let refused = |why: &str| {
        anyhow::anyhow!(
            "the waiting spend {why}: it was not built by this wallet and is not signed; nothing was done"
        )
    };
    let destination = super::address_on(session.network, &spend.destination)
        .map_err(|_| refused("has a damaged destination"))?;
    let outputs = &psbt.unsigned_tx.output;
    let first = outputs.first().ok_or_else(|| refused("pays nothing"))?;
    if first.script_pubkey != destination.script_pubkey() || first.value.to_sat() != spend.amount_sat {
        return Err(refused("does not pay the recorded destination and amount"));
    }
    // The change went to an intake address of the version current when the spend was made.
    for change in outputs.iter().skip(1) {
        let ours = session.policies.known().any(|compiled| {
            (0..state.next_intake).any(|i| {
                compiled.intake_descriptor(i).is_ok_and(|d| d.script_pubkey() == change.script_pubkey)
            })
        });
        if !ours || outputs.len() > 2 {
            return Err(refused("pays an address that is not this wallet's"));
        }
    }
    Ok(())
}

/// Refuses a waiting funding this wallet did not build itself before anything signs it: it is
/// the transaction recorded when the vault began, pays the vault's own output first, and its
/// only other output (change) is one of this wallet's intake addresses.
fn own_funding(
    session: &Session,
    state: &WalletState,
    pending: &PendingVault,
    plan: &vigil_policy::VaultPlan,
    unsigned: &vigil_policy::bitcoin::psbt::Psbt,
) -> anyhow::Result<()> {
    let refused = |why: &str| {
        anyhow::anyhow!("the waiting vault's funding {why}: it was not built by this wallet and is not signed; nothing was done")
    };
    if serialize_hex(&unsigned.unsigned_tx) != pending.unsigned_funding {
        return Err(refused("is not the transaction recorded when the vault began"));
    }
    let compiled = session.policies.version(pending.policy_version)?;
    let outputs = &unsigned.unsigned_tx.output;
    if outputs.first() != Some(&compiled.vault_output(plan)?) {
        return Err(refused("does not pay the vault's own output"));
    }
    // The change: a receive index handed out, or (format 2) a change-branch index taken.
    let received = (0..state.next_intake).map(|i| (i, false));
    let changes = (0..state.change_indexes()).map(|i| (i, true));
    for change in outputs.iter().skip(1) {
        let ours = received.clone().chain(changes.clone()).any(|(i, branch)| {
            compiled.intake_descriptor_on(i, branch).is_ok_and(|d| d.script_pubkey() == change.script_pubkey)
        });
        if !ours || outputs.len() > 2 {
            return Err(refused("pays an address that is not this wallet's"));
        }
    }
    Ok(())
}

/// Sends the owner's half of a vault built under policy `version`, records the vault once
/// every tower holds it, then broadcasts the funding (recorded first: a crash in between sends
/// it again next time).
fn send_and_broadcast(
    session: &Session,
    state: &mut WalletState,
    prepared: &vaulting::Prepared,
    version: Option<u32>,
    wallet: &WalletArgs,
) -> anyhow::Result<()> {
    let chain = session.chain();
    let compiled = session.policies.version(version)?;
    let (status, vault) = match vaulting::finish(&session.cosigner, compiled, prepared) {
        Ok(done) => done,
        Err(vaulting::VaultingError::Cosigner(ClientError::Refused { status: 404, message, .. }))
            if message.contains("no ceremony in progress") =>
        {
            // The ceremony expired (or the co-signer restarted) before the owner's half came.
            state.pending_vault = None;
            state.note(format!("vault {} was never made: {message}", prepared.outpoint));
            session.dir.save_state(state)?;
            bail!("the co-signer no longer holds this vault's ceremony ({message}); its coins are free: run `vigil vault` again")
        }
        Err(e) => return Err(e.into()),
    };
    if status.state != "protected" {
        let missing: Vec<_> =
            status.towers.iter().filter(|t| !t.acknowledged).map(|t| t.name.clone()).collect();
        bail!(
            "not every watchtower holds the vault yet ({} missing): its coins were NOT moved. The co-signer \
             keeps trying; run `vigil vault` again later to finish it",
            missing.join(", ")
        );
    }
    let amount = vault.plan.amount.to_sat();
    // Recorded before the broadcast: a crash in between sends it again next time.
    state.vaults.push(record_of(&vault, compiled.policy().version, prepared.once_xpubs.clone()));
    state.pending_vault = None;
    state.note(format!("vault {} of {} made", vault.outpoint(), btc(amount)));
    session.dir.save_state(state)?;
    chain.broadcast(&vault.funding).map_err(|e| {
        anyhow::anyhow!(
            "the funding was not broadcast ({e}); it is saved and sent again by the next `vigil vault`"
        )
    })?;
    let kind = vault.plan.kind.name();
    if wallet.json {
        println!(
            "{}",
            json!({"vault": vault.outpoint().to_string(), "amount_sat": amount, "kind": kind, "state": "protected"})
        );
    } else {
        println!("Vault made: {} ({kind}), watched by {} towers.", btc(amount), status.towers.len());
    }
    Ok(())
}

/// `vigil spend`.
#[derive(Args)]
pub struct SpendArgs {
    #[command(flatten)]
    wallet: WalletArgs,
    /// Where to send (an address of the wallet's network).
    address: Option<String>,
    /// How much, in BTC (for example 0.05).
    amount: Option<String>,
    /// Continue the spends under way instead of starting one.
    #[arg(long)]
    resume: bool,
    /// Keep going until each spend is done or stopped, saying what it waits for.
    #[arg(long)]
    wait: bool,
    /// A vault spend signed elsewhere (a hardware signer): write its PSBT to FILE instead of
    /// asking for the phrase.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    sign_elsewhere: Option<PathBuf>,
    /// Take back the PSBT signed elsewhere and carry on with that spend.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["address", "sign_elsewhere"])]
    signed: Option<PathBuf>,
}

fn describe(progress: &Progress, tip: u32) -> (String, serde_json::Value) {
    let value = match progress {
        Progress::WaitingForGuardians { approvals, needed } => {
            json!({"stage": "waiting for guardians", "approvals": approvals, "needed": needed})
        }
        Progress::WaitingForTowers { towers, send_anyway_at } => {
            json!({"stage": "waiting for towers", "towers": towers, "send_anyway_at_height": send_anyway_at, "height": tip})
        }
        Progress::LockedDown { until } => {
            json!({"stage": "locked down", "until_height": until, "height": tip})
        }
        Progress::Waiting { from_height } => {
            json!({"stage": "unlocking", "spendable_from_height": from_height, "height": tip})
        }
        Progress::Sent { txid } => json!({"stage": "sent", "txid": txid}),
        Progress::Done { txid } => json!({"stage": "done", "txid": txid}),
        Progress::Unsigned => json!({"stage": "waiting for the owner's signature"}),
        Progress::Denied => json!({"stage": "denied"}),
        Progress::Stopped(why) => json!({"stage": "stopped", "reason": why}),
    };
    (progress.describe(tip), value)
}

/// `vigil spend ADDRESS AMOUNT`, or `--resume`: a vault spend, step by step, resumable.
pub fn spend(args: SpendArgs) -> anyhow::Result<()> {
    // Bad input is refused before anything is asked or sent.
    let target = match (&args.address, &args.amount, args.resume) {
        (Some(address), Some(amount), false) => {
            let address = parse_address(&args.wallet, address)?;
            let amount = parse_btc(amount)?;
            let dust = address.script_pubkey().minimal_non_dust();
            if amount < dust {
                bail!("{amount} is below what the network relays to that address ({dust}); nothing was done");
            }
            Some((address, amount))
        }
        (None, None, _) if args.resume || args.signed.is_some() => None,
        _ => bail!("give an ADDRESS and an AMOUNT, or --resume"),
    };
    let signed = match &args.signed {
        Some(f) => Some(super::recover::read_psbt(f)?),
        None => None,
    };
    let session = open(&args.wallet)?;
    let chain = session.chain();
    let mut state = session.dir.state()?;
    state.scan(&session.policies, &*chain)?;
    if let (Some((address, amount)), Some(file)) = (&target, &args.sign_elsewhere) {
        let pos = spending::prepare(&session, &mut state, None, address, *amount)?;
        session.dir.save_state(&state)?;
        std::fs::write(file, &state.spends[pos].psbt)
            .with_context(|| format!("writing {}", file.display()))?;
        if args.wallet.json {
            println!(
                "{}",
                json!([{"id": null, "progress": {"stage": "waiting for the owner's signature", "psbt": file.display().to_string()}}])
            );
        } else {
            println!(
                "The spend's PSBT is in {}: sign it with your signer (check the amount and the address",
                file.display()
            );
            println!("on its screen), then run `vigil spend --signed FILE`.");
        }
        return Ok(());
    }
    if let Some((address, amount)) = &target {
        // From the allowance if it fits: instantly, with no phrase and no wait.
        let opened = super::open_allowance(&session, &state).and_then(|mut a| {
            a.sync(&*chain)?;
            Ok(a)
        });
        let paid = match opened {
            Ok(mut allowance) => {
                super::pay_from_allowance(&session, &mut allowance, &*chain, address, *amount)?
            }
            // Unreadable: the spend is asked of a vault instead, which says so.
            Err(e) => {
                say(&format!("Note: the allowance cannot be read right now ({e})."));
                None
            }
        };
        if let Some(tx) = paid {
            let txid = tx.compute_txid();
            state.note(format!("allowance payment of {amount} to {address}: {txid}"));
            session.dir.save_state(&state)?;
            if args.wallet.json {
                println!(
                    "{}",
                    json!([{"id": null, "progress": {"stage": "sent from the allowance", "txid": txid.to_string()}}])
                );
            } else {
                println!("Sent {amount} to {address} from your allowance ({txid}).");
            }
            return Ok(());
        }
    }
    let on_device = super::device::has_signer(&session.dir)?;
    let positions: Vec<usize> = match target {
        Some((address, amount)) => {
            let key = if on_device { None } else { Some(vault_key(&session)?) };
            let pos = spending::prepare(&session, &mut state, key.as_ref(), &address, amount)?;
            // Recorded before it is sent: a lost answer is asked again with the same request;
            // one the device has not signed yet waits as "unsigned" for --resume.
            session.dir.save_state(&state)?;
            if on_device {
                sign_spend_on_device(&session, &mut state, pos)?;
            }
            vec![pos]
        }
        None => match &signed {
            Some(psbt) => {
                let pos = spending::take_signed(&session, &mut state, psbt)?;
                session.dir.save_state(&state)?;
                vec![pos]
            }
            None => {
                let active: Vec<usize> =
                    (0..state.spends.len()).filter(|&i| state.spends[i].active()).collect();
                for &pos in active.iter().filter(|_| on_device) {
                    if state.spends[pos].stage == "unsigned" {
                        sign_spend_on_device(&session, &mut state, pos)?;
                    }
                }
                active
            }
        },
    };
    if positions.is_empty() {
        bail!("no spend is under way");
    }
    let mut answers = Vec::new();
    for pos in positions {
        let progress = loop {
            let progress = spending::advance(&session, &mut state, &*chain, pos);
            session.dir.save_state(&state)?;
            let progress = progress?;
            let tip = chain.tip().map(|t| t.height).unwrap_or(0);
            if !args.wait || progress.finished() {
                break (progress, tip);
            }
            if !args.wallet.json {
                say(&format!("spend {}: {}", state.spends[pos].id, describe(&progress, tip).0));
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        };
        let id = state.spends[pos].id;
        let (text, value) = describe(&progress.0, progress.1);
        answers.push(json!({"id": id, "progress": value}));
        if !args.wallet.json {
            println!("Spend {id}: {text}");
        }
    }
    if args.wallet.json {
        println!("{}", serde_json::Value::from(answers));
    }
    Ok(())
}
