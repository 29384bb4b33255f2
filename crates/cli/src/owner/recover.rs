//! `vigil recover`: when the co-signer is gone for good, the owner and the guardians move the
//! coins through the recovery leaves after T_RECOVER (`vigil_client::recovery`).
//!
//! Run once: every vault's unvault is sent (the towers cancel them to the recovery output),
//! and the command says which coins are ready and when the rest will be. With `--to`, the
//! ready coins go into one PSBT the owner signs, written to a file for the guardians; each
//! signs it with `vigil guardian sign-recovery`; `--finish` takes it back, checks it is the
//! same transaction, and broadcasts it (again on every run until it confirms).

use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::Engine;
use clap::Args;
use serde_json::json;
use vigil_client::allowance::Allowance;
use vigil_client::recovery::{self, Survey};
use vigil_client::wallet::PendingRecovery;
use vigil_cosigner::wire;
use vigil_policy::bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::Transaction;

use super::{backup_key, btc, open, say, vault_key, WalletArgs};

/// `vigil recover`.
#[derive(Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    wallet: WalletArgs,
    /// Move every ready coin to this address (yours: a new wallet's, not this one's).
    #[arg(long, value_name = "ADDRESS")]
    to: Option<String>,
    /// The PSBT file written for the guardians to sign.
    #[arg(long, value_name = "FILE", default_value = "recovery.psbt")]
    psbt: PathBuf,
    /// The PSBT file(s) the guardians signed: check, finish and broadcast.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    finish: Vec<PathBuf>,
    /// Return the coins swept to the deep vault instead: signed by your off-site backup key
    /// (its phrase, or the second Ledger `init --backup-signer` took it from) and every
    /// guardian, then the co-signer (at once, the fast path).
    #[arg(long)]
    deep_vault: bool,
    /// With --deep-vault, without the co-signer: the backup key and the guardians' quorum,
    /// once LONG blocks have passed.
    #[arg(long, requires = "deep_vault")]
    slow: bool,
    /// With --deep-vault: the backup key is on this device (`ledger`), which this wallet has
    /// no record of (a restored wallet): it is checked against the policy and recorded.
    #[arg(long, value_parser = ["ledger"], requires = "deep_vault")]
    backup_signer: Option<String>,
    /// The backup's Ledger is the emulator listening here (tests and demos), not one on USB.
    #[arg(long, value_name = "HOST:PORT", requires = "backup_signer")]
    backup_signer_emulator: Option<std::net::SocketAddr>,
    /// With --to: do not ask for the phrase; the PSBT is written unsigned, for your signer
    /// elsewhere (a hardware signer) to sign along with the guardians.
    #[arg(long, requires = "to")]
    sign_elsewhere: bool,
    /// Start the clock: send every vault's unvault (the towers cancel them to your recovery
    /// output). Only when the co-signer is gone for good: it cannot be undone.
    #[arg(long, conflicts_with = "deep_vault")]
    unvault: bool,
}

pub fn recover(args: RecoverArgs) -> anyhow::Result<()> {
    let to = args.to.as_deref().map(|a| super::parse_address(&args.wallet, a)).transpose()?;
    let copies: Vec<Psbt> = args.finish.iter().map(read_psbt).collect::<anyhow::Result<_>>()?;
    let session = open(&args.wallet)?;
    let chain = session.chain();
    let mut state = session.dir.state()?;
    let tip = state.scan(&session.policies, &*chain)?;
    session.dir.save_state(&state)?;

    // A finished recovery is broadcast on every run until it confirms.
    let in_flight = state.recovery.as_ref().and_then(|r| r.tx.as_ref()).is_some_and(|hex| {
        deserialize_hex::<Transaction>(hex)
            .map_or(true, |tx| !matches!(chain.transaction_info(&tx.compute_txid()), Ok(Some((_, Some(_))))))
    });
    if !copies.is_empty() || (in_flight && to.is_none()) {
        let pending = state
            .recovery
            .clone()
            .context("no recovery was prepared in this wallet: run `vigil recover --to ADDRESS`")?;
        let tx = match &pending.tx {
            Some(hex) => deserialize_hex::<Transaction>(hex).context("the recovery's record is damaged")?,
            None => {
                let mut psbt = recovery::combine(copies, pending.unsigned_txid.parse()?)?;
                if pending.cosigner_signs {
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let signed: wire::DeepVaultSigned = session.cosigner.post(
                        "/v1/deep-vault/sign",
                        &wire::DeepVaultSpend { psbt: b64.encode(psbt.serialize()) },
                    )?;
                    let theirs = Psbt::deserialize(&b64.decode(&signed.psbt)?)?;
                    psbt = recovery::combine(vec![psbt, theirs], pending.unsigned_txid.parse()?)?;
                }
                let tx = recovery::finish(psbt)?;
                // Kept before it is broadcast: it is sent again until it confirms.
                state.recovery.as_mut().expect("checked").tx = Some(serialize_hex(&tx));
                state.note(format!("recovery {} signed by the guardians", tx.compute_txid()));
                session.dir.save_state(&state)?;
                tx
            }
        };
        let txid = tx.compute_txid();
        let confirmed = matches!(chain.transaction_info(&txid), Ok(Some((_, Some(_)))));
        if !confirmed {
            if let Err(e) = chain.broadcast(&tx) {
                say(&format!("Note: the node did not take it now ({e}); it may have it already."));
            }
        }
        let stage = if confirmed { "confirmed" } else { "sent" };
        if args.wallet.json {
            println!(
                "{}",
                json!({"txid": txid.to_string(), "stage": stage, "amount_sat": pending.amount_sat})
            );
        } else if confirmed {
            println!("Recovered: {} reached {} ({txid}).", btc(pending.amount_sat), pending.destination);
        } else {
            println!(
                "Sent: {} to {} ({txid}). Run `vigil recover` again to see it confirm.",
                btc(pending.amount_sat),
                pending.destination
            );
        }
        return Ok(());
    }

    // Only signing needs a phrase (or the device): the survey reads the chain.
    let on_device = !args.sign_elsewhere && !args.deep_vault && super::device::has_signer(&session.dir)?;
    if args.backup_signer.is_some() && to.is_some() && !args.sign_elsewhere {
        super::device::find_backup_device(&session, args.backup_signer_emulator)?;
    }
    let on_backup_device =
        !args.sign_elsewhere && args.deep_vault && super::device::has_backup_signer(&session.dir)?;
    // The key signing here, and for the deep vault which backup key it is.
    let (key, backup) = match (&to, args.deep_vault) {
        (None, _) => (None, None),
        (Some(_), true) if on_backup_device => (None, Some(session.current().policy().backup.xpub)),
        (Some(_), _) if args.sign_elsewhere || on_device => (None, None),
        (Some(_), true) => {
            let (key, xpub) = backup_key(&session)?;
            (Some(key), Some(xpub))
        }
        (Some(_), false) => (Some(vault_key(&session)?), None),
    };
    // Nothing here waits for the co-signer: the vaults' own unvaults start the clock.
    let mut sent = Vec::new();
    if args.unvault {
        let unvaults = recovery::unvaults_to_send(&mut state, &*chain)?;
        session.dir.save_state(&state)?;
        for (vault, tx, fresh) in unvaults {
            if let Err(e) = chain.broadcast(&tx) {
                say(&format!(
                    "Note: the unvault of vault {vault} was not taken now ({e}); run again to resend it."
                ));
            }
            if fresh {
                sent.push(vault);
            }
        }
    }
    let mut survey = recovery::survey(&session.policies, &state, &*chain)?;
    if args.deep_vault {
        let (mut ready, mut later) = (Vec::new(), Vec::new());
        for mut coin in std::mem::take(&mut survey.deep_vault) {
            if !args.slow {
                coin.opens_at = 0;
                ready.push(coin);
            } else {
                coin.input.sequence = coin.slow_wait;
                if coin.opens_at <= tip + 1 {
                    ready.push(coin)
                } else {
                    later.push(coin)
                }
            }
        }
        survey = Survey { ready, later, ..Default::default() };
    }
    // Ready coins this signer cannot sign, said and left out.
    let mut left_out = 0;
    if let Some(backup) = backup {
        // A coin swept into the deep vault of a version with another backup key (a change
        // replaced it) would leave the transaction unsignable for every coin: it is left for
        // that key, and said so; the rest go.
        let (signable, left): (Vec<_>, Vec<_>) =
            std::mem::take(&mut survey.ready).into_iter().partition(|c| {
                session.policies.version(c.version).is_ok_and(|p| p.policy().backup.xpub == backup)
            });
        for c in &left {
            let version = session.policies.version(c.version).map(|p| p.policy().version.to_string());
            say(&format!(
                "Left out: coin {} (deep vault, {}): it was swept under policy version {}, whose backup key \
                 is another; once this recovery is finished, run this again with that key's phrase for it.",
                c.input.outpoint,
                btc(c.input.txout.value.to_sat()),
                version.unwrap_or_else(|_| "unknown".into()),
            ));
        }
        left_out += left.len();
        survey.ready = signable;
    }
    if on_device && to.is_some() {
        // Coins the device cannot sign are left for another way, and said so; the rest go.
        let (signable, left): (Vec<_>, Vec<_>) = std::mem::take(&mut survey.ready)
            .into_iter()
            .partition(|c| super::device::recovery_wallet(&session, &state, c).is_ok());
        for c in &left {
            if let Err(why) = super::device::recovery_wallet(&session, &state, c) {
                say(&format!(
                    "Left out: coin {} ({}): your Ledger cannot sign it ({why}).",
                    c.input.outpoint,
                    c.kind.name()
                ));
            }
        }
        left_out += left.len();
        survey.ready = signable;
    }
    let prepared = match (&to, survey.ready.is_empty()) {
        (Some(to), false) => {
            let mut psbt = recovery::recovery_psbt(&survey.ready, to, Allowance::feerate(&*chain))?;
            if let Some(key) = &key {
                key.sign_psbt(&mut psbt);
            }
            if on_device {
                psbt = super::device::sign_recovery(&session, &state, &survey.ready, &psbt, &to.to_string())?;
            }
            if on_backup_device {
                psbt = super::device::sign_deep_vault(&session, &survey.ready, &psbt, &to.to_string())?;
            }
            let amount = psbt.unsigned_tx.output[0].value.to_sat();
            state.recovery = Some(PendingRecovery {
                unsigned_txid: psbt.unsigned_tx.compute_txid().to_string(),
                destination: to.to_string(),
                amount_sat: amount,
                coins: survey.ready.iter().map(|c| c.input.outpoint).collect(),
                tx: None,
                cosigner_signs: args.deep_vault && !args.slow,
            });
            state.note(format!("recovery of {} to {to} prepared for the guardians", btc(amount)));
            std::fs::write(&args.psbt, base64::engine::general_purpose::STANDARD.encode(psbt.serialize()))
                .with_context(|| format!("writing {}", args.psbt.display()))?;
            session.dir.save_state(&state)?;
            Some(amount)
        }
        (Some(_), true) => {
            if left_out > 0 {
                bail!("no ready coin is left that this key signs; nothing was prepared");
            }
            bail!("{}no coin's recovery leaf is open yet; nothing was prepared", report(&survey, tip, &sent))
        }
        (None, _) => None,
    };
    if args.wallet.json {
        let coins = |list: &[recovery::RecoverableCoin]| -> Vec<serde_json::Value> {
            list.iter()
                .map(|c| {
                    json!({
                        "outpoint": c.input.outpoint.to_string(),
                        "kind": c.kind.name(),
                        "amount_sat": c.input.txout.value.to_sat(),
                        "opens_at": (c.opens_at != u32::MAX).then_some(c.opens_at),
                    })
                })
                .collect()
        };
        let list =
            |v: &[vigil_policy::bitcoin::OutPoint]| v.iter().map(|o| o.to_string()).collect::<Vec<_>>();
        println!(
            "{}",
            json!({
                "height": tip,
                "unvaults_sent": list(&sent),
                "ready": coins(&survey.ready),
                "later": coins(&survey.later),
                "unvaulting": list(&survey.unvaulting),
                "in_place": list(&survey.in_place),
                "deep_vault": coins(&survey.deep_vault),
                "unreadable": survey.unreadable.iter().map(|(o, why)| json!({"outpoint": o.to_string(), "reason": why})).collect::<Vec<_>>(),
                "psbt": prepared.map(|_| args.psbt.display().to_string()),
                "amount_sat": prepared,
            })
        );
        return Ok(());
    }
    print!("{}", report(&survey, tip, &sent));
    match prepared {
        Some(amount) => {
            let by = if args.sign_elsewhere {
                "written, for your signer to sign,"
            } else {
                "signed by you and written"
            };
            println!("The recovery of {} is {by} to {}.", btc(amount), args.psbt.display());
            println!("Give that file to your guardians: each runs `vigil guardian sign-recovery FILE`");
            println!("and gives it back. Then run `vigil recover --finish FILE` to send it.");
        }
        None if !survey.ready.is_empty() => {
            println!("Run `vigil recover --to ADDRESS` to move the ready coins to an address of yours.")
        }
        None => println!("Run `vigil recover` again after that block."),
    }
    Ok(())
}

/// Where the coins stand, in words.
fn report(survey: &Survey, tip: u32, sent: &[vigil_policy::bitcoin::OutPoint]) -> String {
    let mut text = format!("At block {tip}.\n");
    for v in sent {
        text +=
            &format!("Unvault of vault {v} sent: the watchtowers will move it to your recovery output.\n");
    }
    for v in &survey.in_place {
        text += &format!(
            "Vault {v} is in place. If the co-signer is gone for good, `vigil recover --unvault` starts its clock \
             (it cannot be undone).\n"
        );
    }
    for v in &survey.unvaulting {
        text += &format!("Vault {v}: its unvault is waiting to confirm.\n");
    }
    for c in &survey.ready {
        text += &format!(
            "Ready: {} ({} coin {})\n",
            btc(c.input.txout.value.to_sat()),
            c.kind.name(),
            c.input.outpoint
        );
    }
    for c in &survey.later {
        let when = if c.opens_at == u32::MAX {
            "once it confirms".to_owned()
        } else {
            format!("at block {}", c.opens_at)
        };
        text += &format!(
            "Later: {} ({} coin {}) can be recovered {when}\n",
            btc(c.input.txout.value.to_sat()),
            c.kind.name(),
            c.input.outpoint
        );
    }
    for c in &survey.deep_vault {
        text += &format!(
            "In the deep vault: {} (coin {}): `vigil recover --deep-vault` returns it with your backup key \
             and every guardian\n",
            btc(c.input.txout.value.to_sat()),
            c.input.outpoint
        );
    }
    for (coin, why) in &survey.unreadable {
        text += &format!("Not readable now: coin {coin}: {why}\n");
    }
    text
}

pub(super) fn read_psbt(path: &PathBuf) -> anyhow::Result<Psbt> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| anyhow::anyhow!("{} is not a base64 PSBT: {e}; nothing was done", path.display()))?;
    Psbt::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a PSBT: {e}; nothing was done", path.display()))
}
