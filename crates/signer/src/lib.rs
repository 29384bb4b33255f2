//! Hardware signers: finding the ones connected and saying what each one is, in words a holder
//! can act on (no device, locked, the Bitcoin app not open, the other network's app), and
//! reading keys from one that is ready.
//!
//! One file per device kind (`ledger.rs`); Vigil's own trait, [`Signer`], stays small so that
//! another kind is one more file. Why Ledger devices are reached through LedgerHQ's client
//! directly rather than a multi-vendor library: docs/adr/0008-hardware-signer-devices.md.

use std::net::SocketAddr;

use bitcoin::address::NetworkUnchecked;
use bitcoin::bip32::{DerivationPath, Fingerprint, Xpub};
use bitcoin::psbt::Psbt;
use bitcoin::{Address, Network};
use serde::Serialize;

pub mod ledger;

/// What went wrong talking to a device.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// Nothing answers where a device was expected.
    #[error("{0}")]
    NotThere(String),
    /// The connection to the device failed or broke.
    #[error("the device did not answer: {0}")]
    Io(String),
    /// The user pressed Reject on the device.
    #[error("you rejected it on the device")]
    Rejected,
    /// The device does not accept the registration it was shown: not one it made (a device
    /// derives its registrations from its seed, so the record kept of it was altered). The
    /// wallet must be registered again.
    #[error("the device does not accept this record of its registration of the account")]
    NotRegistered,
    /// The device answered with an error status.
    #[error("the device refused the request (status {0:#06x})")]
    Status(u16),
    /// A wallet handed to the device is not one it could take (a bug in the caller).
    #[error("the wallet cannot be given to the device: {0}")]
    BadWallet(String),
    /// The device's answer could not be read.
    #[error("the device answered something unexpected: {0}")]
    Unexpected(String),
}

/// A device ready to use: the Bitcoin app of the expected network is open.
pub trait Signer {
    /// The device's kind and model, for people ("Ledger Nano S Plus").
    fn label(&self) -> &str;
    /// The master key's fingerprint.
    fn fingerprint(&self) -> Result<Fingerprint, SignerError>;
    /// The extended public key at `path`.
    fn xpub(&self, path: &DerivationPath) -> Result<Xpub, SignerError>;
    /// Shows `wallet` to the holder and, once they approve it, registers it: the device then
    /// signs for it and shows its addresses. Waits on the holder.
    fn register(&self, wallet: &Wallet) -> Result<Registration, SignerError>;
    /// The address of `wallet` (registered, or a single-key account with no registration) at
    /// `index` on its receive or change branch, as the device computes it; `display` shows it
    /// on the screen for the holder to compare (and waits on them).
    fn address(
        &self,
        wallet: &Wallet,
        registration: Option<&Registration>,
        change: bool,
        index: u32,
        display: bool,
    ) -> Result<Address<NetworkUnchecked>, SignerError>;
    /// Shows `psbt` to the holder and, once they approve it, signs the inputs of `wallet` it
    /// holds a key of: `psbt` with the device's taproot signatures added. `wallet` is one the
    /// device registered, or, with no registration, a standard single-key account it knows
    /// without one ([`Wallet::single_key`]). Waits on the holder. The caller checks every
    /// signature.
    fn sign(
        &self,
        psbt: &Psbt,
        wallet: &Wallet,
        registration: Option<&Registration>,
    ) -> Result<Psbt, SignerError>;
}

/// A BIP-388 wallet policy as a device takes it: a name, a descriptor template over `@i`
/// key placeholders, and the key information each stands for (`[fp/path]xpub` or an xpub).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wallet {
    /// The name the device shows.
    pub name: String,
    /// The descriptor template.
    pub template: String,
    /// `@i`'s key information.
    pub keys: Vec<String>,
}

impl Wallet {
    /// The standard single-key taproot account (BIP-86) of `key` (`[fp/86h/coinh/accounth]xpub`):
    /// a device signs for it and shows its addresses without registering it.
    pub fn single_key(key: String) -> Wallet {
        Wallet { name: String::new(), template: "tr(@0/**)".into(), keys: vec![key] }
    }
}

/// What a device gives back for a wallet it registered: the wallet's id and the proof of
/// registration the device checks whenever it is shown the wallet again (kept with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// The wallet policy's id (a hash of its serialization).
    pub id: [u8; 32],
    /// The device's HMAC over the id, under a key only it holds.
    pub hmac: [u8; 32],
}

/// One device seen, and what state it is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    /// `"ledger"`.
    pub kind: &'static str,
    /// The model, or the emulator's address.
    pub label: String,
    /// What it can do now.
    #[serde(flatten)]
    pub state: DeviceState,
}

/// What a device seen can do now, and what the holder must do otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeviceState {
    /// The Bitcoin app of the expected network is open.
    Ready {
        /// The app's name ("Bitcoin", "Bitcoin Test").
        app: String,
        /// Its version.
        version: String,
        /// The master key's fingerprint, in hex.
        fingerprint: String,
    },
    /// The Bitcoin app is open, but the other network's.
    WrongNetwork {
        /// The app open.
        app: String,
        /// Its version.
        version: String,
        /// The app this wallet needs.
        needed: String,
    },
    /// A Bitcoin app too old for wallet policies.
    TooOld {
        /// The app open.
        app: String,
        /// Its version.
        version: String,
        /// The oldest version that works.
        needed: String,
    },
    /// Unlocked, but another app (or the device's menu) is open.
    AppNotOpen {
        /// What is open ("BOLOS" is the device's own menu).
        open: String,
    },
    /// The device waits for its PIN.
    Locked,
    /// Seen (or asked for), but it cannot be used.
    Unreachable {
        /// Why, in words.
        why: String,
    },
}

impl Found {
    /// One line a holder can act on.
    pub fn describe(&self) -> String {
        let what = match &self.state {
            DeviceState::Ready { app, version, fingerprint } => {
                format!("ready: {app} app {version}, key fingerprint {fingerprint}")
            }
            DeviceState::WrongNetwork { app, version, needed } => format!(
                "the \"{app}\" app ({version}) is open, but this wallet needs the \"{needed}\" app: open that one"
            ),
            DeviceState::TooOld { app, version, needed } => {
                format!("the \"{app}\" app is version {version}; update it to {needed} or later")
            }
            DeviceState::AppNotOpen { open } if open == "BOLOS" => {
                "unlocked, but no app is open: open the Bitcoin app".to_owned()
            }
            DeviceState::AppNotOpen { open } => format!("the \"{open}\" app is open: open the Bitcoin app"),
            DeviceState::Locked => "locked: enter its PIN, then open the Bitcoin app".to_owned(),
            DeviceState::Unreachable { why } => format!("cannot be used: {why}"),
        };
        format!("{}: {what}", self.label)
    }
}

/// The name of the Ledger Bitcoin app that signs for `network`.
pub fn app_for(network: Network) -> &'static str {
    match network {
        Network::Bitcoin => "Bitcoin",
        _ => "Bitcoin Test",
    }
}

/// Every hardware signer connected over USB, and the emulator at `emulator` if one is given
/// (tests and demos), for a wallet on `network`. An empty list means none is connected; a
/// device (or an emulator asked for) that cannot be used is listed with why.
pub fn list(network: Network, emulator: Option<SocketAddr>) -> Vec<Found> {
    let mut found = ledger::list_usb(network);
    if let Some(addr) = emulator {
        found.push(ledger::probe_emulator(addr, network));
    }
    found
}
