//! Ledger devices running LedgerHQ's Bitcoin app (2.1 or later: wallet policies with
//! miniscript and taproot), over USB HID or, for tests, the Speculos emulator's APDU port.
//!
//! Which app is open is asked with the device's own "get app and version" command, whose raw
//! status word is kept: it is the only way to tell a locked device, the device's menu, another
//! app and the other network's Bitcoin app apart, and to say which one to the holder.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use bitcoin::address::NetworkUnchecked;
use bitcoin::bip32::{DerivationPath, Fingerprint, Xpub};
use bitcoin::psbt::Psbt;
use bitcoin::{Address, Network};
use ledger_bitcoin_client::apdu::{APDUCommand, StatusWord};
use ledger_bitcoin_client::client::{BitcoinClient, Transport};
use ledger_bitcoin_client::error::BitcoinClientError;
use ledger_bitcoin_client::psbt::PartialSignature;
use ledger_bitcoin_client::wallet::{Version, WalletPolicy, WalletPubKey};
use ledger_bitcoin_client::SignPsbtYieldedObject;
use ledger_transport_hidapi::hidapi::HidApi;
use ledger_transport_hidapi::TransportNativeHID;
use std::str::FromStr;

use crate::{app_for, DeviceState, Found, Registration, Signer, SignerError, Wallet};

/// The oldest app that registers wallet policies with miniscript in taproot trees.
pub const OLDEST_APP: (u32, u32, u32) = (2, 1, 0);

/// Status words of the device's OS (not the Bitcoin app's): waiting for its PIN.
const LOCKED: [u16; 2] = [0x5515, 0x6982];
const OK: u16 = 0x9000;
/// The Bitcoin app's answer to a wallet whose registration (HMAC) it does not accept.
const BAD_REGISTRATION: u16 = 0xB008;

/// How long a device may take to answer a command that shows nothing on its screen.
const ANSWER_TIME: Duration = Duration::from_secs(5);
/// How long a command that waits on the holder (a review on the screen) may take.
const HOLDER_TIME: Duration = Duration::from_secs(600);

/// A way to send one APDU to a device and read its answer: data and status word.
trait Link: Send + Sync {
    fn exchange(&self, apdu: &[u8]) -> Result<(u16, Vec<u8>), SignerError>;
    /// How long to wait for the next answers.
    fn patience(&self, _wait: Duration) -> Result<(), SignerError> {
        Ok(())
    }
}

/// The emulator's APDU port: each message is framed by its 4-byte big-endian length (the
/// answer's length does not count its 2-byte status word).
struct Tcp(Mutex<TcpStream>);

impl Link for Tcp {
    fn exchange(&self, apdu: &[u8]) -> Result<(u16, Vec<u8>), SignerError> {
        let io = |e: std::io::Error| SignerError::Io(e.to_string());
        let mut stream = self.0.lock().unwrap_or_else(|p| p.into_inner());
        stream.write_all(&(apdu.len() as u32).to_be_bytes()).map_err(io)?;
        stream.write_all(apdu).map_err(io)?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).map_err(io)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > 1 << 16 {
            return Err(SignerError::Unexpected(format!("an answer of {len} bytes")));
        }
        let mut answer = vec![0u8; len + 2];
        stream.read_exact(&mut answer).map_err(io)?;
        let status = u16::from_be_bytes([answer[len], answer[len + 1]]);
        answer.truncate(len);
        Ok((status, answer))
    }

    fn patience(&self, wait: Duration) -> Result<(), SignerError> {
        let stream = self.0.lock().unwrap_or_else(|p| p.into_inner());
        stream.set_read_timeout(Some(wait)).map_err(|e| SignerError::Io(e.to_string()))
    }
}

/// A device on USB.
struct Usb(TransportNativeHID);

impl Link for Usb {
    fn exchange(&self, apdu: &[u8]) -> Result<(u16, Vec<u8>), SignerError> {
        if apdu.len() < 5 {
            return Err(SignerError::Unexpected("an APDU shorter than its header".into()));
        }
        let command = ledger_apdu::APDUCommand {
            cla: apdu[0],
            ins: apdu[1],
            p1: apdu[2],
            p2: apdu[3],
            data: apdu[5..].to_vec(),
        };
        let answer = self.0.exchange(&command).map_err(|e| SignerError::Io(e.to_string()))?;
        Ok((answer.retcode(), answer.data().to_vec()))
    }
}

/// LedgerHQ's client speaks through a [`Link`]; the last raw status word is kept, since the
/// client's own type names only the Bitcoin app's (a locked device's would be lost).
struct Via<'a> {
    link: &'a dyn Link,
    last_status: Cell<u16>,
}

impl Transport for &Via<'_> {
    type Error = SignerError;

    fn exchange(&self, command: &APDUCommand) -> Result<(StatusWord, Vec<u8>), SignerError> {
        let (status, data) = self.link.exchange(&command.encode())?;
        self.last_status.set(status);
        Ok((StatusWord::try_from(status).unwrap_or(StatusWord::Unknown), data))
    }
}

impl Via<'_> {
    fn error(&self, e: BitcoinClientError<SignerError>) -> SignerError {
        match e {
            BitcoinClientError::Transport(e) => e,
            BitcoinClientError::Device { status: StatusWord::Deny, .. } => SignerError::Rejected,
            BitcoinClientError::Device { .. } => SignerError::Status(self.last_status.get()),
            other => SignerError::Unexpected(format!("{other:?}")),
        }
    }
}

/// A Ledger device with the Bitcoin app open.
pub struct Ledger {
    label: String,
    link: Box<dyn Link>,
}

impl Ledger {
    /// The emulator listening at `addr`.
    /// The emulator at `addr`. No command of this room waits on a person yet, so an answer
    /// that takes longer than a few seconds is a device that is stuck (or serving another).
    pub fn emulator(addr: SocketAddr) -> Result<Ledger, SignerError> {
        let io = |e: std::io::Error| SignerError::NotThere(format!("nothing answers at {addr}: {e}"));
        let stream = TcpStream::connect_timeout(&addr, ANSWER_TIME).map_err(io)?;
        stream.set_read_timeout(Some(ANSWER_TIME)).map_err(io)?;
        stream.set_write_timeout(Some(ANSWER_TIME)).map_err(io)?;
        Ok(Ledger { label: format!("Ledger emulator at {addr}"), link: Box::new(Tcp(Mutex::new(stream))) })
    }

    /// LedgerHQ's client for one call.
    fn call<T>(
        &self,
        f: impl FnOnce(&BitcoinClient<&Via<'_>>) -> Result<T, BitcoinClientError<SignerError>>,
    ) -> Result<T, SignerError> {
        let via = Via { link: &*self.link, last_status: Cell::new(0) };
        f(&BitcoinClient::new(&via)).map_err(|e| via.error(e))
    }

    /// [`Self::call`] for a command that waits on the holder: the answer may take minutes.
    fn call_holder<T>(
        &self,
        f: impl FnOnce(&BitcoinClient<&Via<'_>>) -> Result<T, BitcoinClientError<SignerError>>,
    ) -> Result<T, SignerError> {
        self.link.patience(HOLDER_TIME)?;
        let answer = self.call(f);
        self.link.patience(ANSWER_TIME)?;
        answer
    }

    /// The app open: its name and version, or the device's OS status word when none answers.
    fn app(&self) -> Result<Result<(String, String), u16>, SignerError> {
        // CLA 0xB0 is the OS's own class: every app, and the device's menu, answers it.
        let (status, data) = self.link.exchange(&[0xB0, 0x01, 0x00, 0x00, 0x00])?;
        if status != OK {
            return Ok(Err(status));
        }
        parse_app(&data).map(Ok)
    }

    /// What this device can do for a wallet on `network`.
    pub fn state(&self, network: Network) -> DeviceState {
        match self.app() {
            Err(e) => DeviceState::Unreachable { why: e.to_string() },
            Ok(Err(status)) if LOCKED.contains(&status) => DeviceState::Locked,
            Ok(Err(status)) => DeviceState::Unreachable { why: format!("status {status:#06x}") },
            Ok(Ok((app, version))) => match classify(&app, &version, network) {
                Some(state) => state,
                None => match self.fingerprint() {
                    Ok(fp) => DeviceState::Ready { app, version, fingerprint: fp.to_string() },
                    Err(SignerError::Status(s)) if LOCKED.contains(&s) => DeviceState::Locked,
                    Err(e) => DeviceState::Unreachable { why: e.to_string() },
                },
            },
        }
    }
}

impl Signer for Ledger {
    fn label(&self) -> &str {
        &self.label
    }

    fn fingerprint(&self) -> Result<Fingerprint, SignerError> {
        self.call(|c| c.get_master_fingerprint())
    }

    fn xpub(&self, path: &DerivationPath) -> Result<Xpub, SignerError> {
        let xpub = self.call(|c| c.get_extended_pubkey(path, false))?;
        // The key asked for, not another: it goes into descriptors.
        let last = path.into_iter().last().copied();
        if xpub.depth as usize != path.len() || last.is_some_and(|n| n != xpub.child_number) {
            return Err(SignerError::Unexpected(format!(
                "a key at depth {} for the path {path}",
                xpub.depth
            )));
        }
        Ok(xpub)
    }

    fn register(&self, wallet: &Wallet) -> Result<Registration, SignerError> {
        let policy = wallet_policy(wallet)?;
        let (id, hmac) = self.call_holder(|c| c.register_wallet(&policy))?;
        // The wallet registered is the one sent, not another.
        if id != policy.id() {
            return Err(SignerError::Unexpected(
                "the device registered another wallet than the one sent".into(),
            ));
        }
        Ok(Registration { id, hmac })
    }

    fn address(
        &self,
        wallet: &Wallet,
        registration: Option<&Registration>,
        change: bool,
        index: u32,
        display: bool,
    ) -> Result<Address<NetworkUnchecked>, SignerError> {
        let policy = wallet_policy(wallet)?;
        let ask = |c: &BitcoinClient<&Via<'_>>| {
            c.get_wallet_address(&policy, registration.map(|r| &r.hmac), change, index, display)
        };
        registration_refused(registration, if display { self.call_holder(ask) } else { self.call(ask) })
    }

    fn sign(
        &self,
        psbt: &Psbt,
        wallet: &Wallet,
        registration: Option<&Registration>,
    ) -> Result<Psbt, SignerError> {
        let policy = wallet_policy(wallet)?;
        let answer = self.call_holder(|c| c.sign_psbt(psbt, &policy, registration.map(|r| &r.hmac)));
        let given = registration_refused(registration, answer)?;
        with_signatures(psbt, given)
    }
}

/// The answer to a command, the app's refusal of the `registration` it was given (if any)
/// named as such.
fn registration_refused<T>(
    registration: Option<&Registration>,
    answer: Result<T, SignerError>,
) -> Result<T, SignerError> {
    match answer {
        Err(SignerError::Status(BAD_REGISTRATION)) if registration.is_some() => {
            Err(SignerError::NotRegistered)
        }
        other => other,
    }
}

/// `psbt` with the taproot signatures the device gave: script-path ones (every Vigil output
/// but the allowance) and key-path ones (the allowance); anything else is refused.
fn with_signatures(psbt: &Psbt, given: Vec<(usize, SignPsbtYieldedObject)>) -> Result<Psbt, SignerError> {
    let mut signed = psbt.clone();
    for (input, object) in given {
        let odd = |what: &str| SignerError::Unexpected(format!("{what} for input {input}"));
        let slot = signed.inputs.get_mut(input).ok_or_else(|| odd("a signature"))?;
        match object {
            SignPsbtYieldedObject::Partial(PartialSignature::TapScriptSig(key, Some(leaf), signature)) => {
                slot.tap_script_sigs.insert((key, leaf), signature);
            }
            SignPsbtYieldedObject::Partial(PartialSignature::TapScriptSig(_, None, signature)) => {
                slot.tap_key_sig = Some(signature);
            }
            _ => return Err(odd("something other than a taproot signature")),
        }
    }
    Ok(signed)
}

/// A [`Wallet`] in LedgerHQ's client's terms (BIP-388, the app's version 2 of them).
fn wallet_policy(wallet: &Wallet) -> Result<WalletPolicy, SignerError> {
    let keys = wallet
        .keys
        .iter()
        .map(|k| WalletPubKey::from_str(k).map_err(|e| SignerError::BadWallet(format!("key {k:?}: {e:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WalletPolicy::new(wallet.name.clone(), Version::V2, wallet.template.clone(), keys))
}

/// The answer to "get app and version": format 1, then the name, the version and (not on
/// every firmware) flags, each prefixed by its length.
fn parse_app(data: &[u8]) -> Result<(String, String), SignerError> {
    let bad = || SignerError::Unexpected(format!("an app and version of {} bytes", data.len()));
    let (&format, mut rest) = data.split_first().ok_or_else(bad)?;
    if format != 1 {
        return Err(bad());
    }
    let mut field = || -> Result<String, SignerError> {
        let (&len, tail) = rest.split_first().ok_or_else(bad)?;
        let (text, tail) = tail.split_at_checked(len as usize).ok_or_else(bad)?;
        rest = tail;
        String::from_utf8(text.to_vec()).map_err(|_| bad())
    };
    Ok((field()?, field()?))
}

/// The state of a device whose open app is `app` at `version`, for a wallet on `network`;
/// `None` when it is the right Bitcoin app, recent enough.
fn classify(app: &str, version: &str, network: Network) -> Option<DeviceState> {
    let needed = app_for(network);
    if app != "Bitcoin" && app != "Bitcoin Test" {
        return Some(DeviceState::AppNotOpen { open: app.to_owned() });
    }
    if app != needed {
        return Some(DeviceState::WrongNetwork {
            app: app.to_owned(),
            version: version.to_owned(),
            needed: needed.to_owned(),
        });
    }
    let (a, b, c) = OLDEST_APP;
    if parse_version(version).is_none_or(|v| v < OLDEST_APP) {
        return Some(DeviceState::TooOld {
            app: app.to_owned(),
            version: version.to_owned(),
            needed: format!("{a}.{b}.{c}"),
        });
    }
    None
}

/// "2.4.6" (a "-rc1" or similar tail ignored).
fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let core = version.trim_start_matches('v').split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Every Ledger on USB, with its state. A device that cannot be opened is listed with why
/// (on Linux, most often Ledger's udev rules are missing).
pub fn list_usb(network: Network) -> Vec<Found> {
    let api = match HidApi::new() {
        Ok(api) => api,
        Err(e) => {
            let why = format!("USB devices cannot be listed on this computer ({e})");
            return vec![Found {
                kind: "ledger",
                label: "USB".into(),
                state: DeviceState::Unreachable { why },
            }];
        }
    };
    let mut found = Vec::new();
    // One at a time: a device opened twice at once can lock up.
    for info in TransportNativeHID::list_ledgers(&api) {
        let label = match info.product_string() {
            Some(p) if p.starts_with("Ledger") => p.to_owned(),
            Some(p) if !p.is_empty() => format!("Ledger {p}"),
            _ => "Ledger".to_owned(),
        };
        let state = match TransportNativeHID::open_device(&api, info) {
            Ok(transport) => Ledger { label: label.clone(), link: Box::new(Usb(transport)) }.state(network),
            Err(e) => DeviceState::Unreachable {
                why: format!("it cannot be opened ({e}); on Linux, install Ledger's udev rules"),
            },
        };
        found.push(Found { kind: "ledger", label, state });
    }
    found
}

/// The first Ledger device on USB.
pub fn connect_usb() -> Result<Ledger, SignerError> {
    let api =
        HidApi::new().map_err(|e| SignerError::NotThere(format!("USB devices cannot be listed ({e})")))?;
    let info = TransportNativeHID::list_ledgers(&api)
        .next()
        .ok_or_else(|| SignerError::NotThere("no Ledger is connected by USB".into()))?;
    let label = info.product_string().unwrap_or("Ledger").to_owned();
    let transport = TransportNativeHID::open_device(&api, info).map_err(|e| {
        SignerError::NotThere(format!(
            "the Ledger cannot be opened ({e}); on Linux, install Ledger's udev rules"
        ))
    })?;
    Ok(Ledger { label, link: Box::new(Usb(transport)) })
}

/// The emulator at `addr`, and its state (unreachable when nothing listens there).
pub fn probe_emulator(addr: SocketAddr, network: Network) -> Found {
    match Ledger::emulator(addr) {
        Ok(ledger) => {
            let state = ledger.state(network);
            Found { kind: "ledger", label: ledger.label, state }
        }
        Err(e) => Found {
            kind: "ledger",
            label: format!("Ledger emulator at {addr}"),
            state: DeviceState::Unreachable { why: e.to_string() },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(name: &str, version: &str, flags: Option<&[u8]>) -> Vec<u8> {
        let mut v = vec![1, name.len() as u8];
        v.extend(name.as_bytes());
        v.push(version.len() as u8);
        v.extend(version.as_bytes());
        if let Some(f) = flags {
            v.push(f.len() as u8);
            v.extend(f);
        }
        v
    }

    #[test]
    fn the_app_answer_is_read_with_or_without_flags() {
        assert_eq!(
            parse_app(&answer("Bitcoin Test", "2.4.6", Some(&[0]))).unwrap(),
            ("Bitcoin Test".into(), "2.4.6".into())
        );
        assert_eq!(parse_app(&answer("BOLOS", "2.0.0", None)).unwrap(), ("BOLOS".into(), "2.0.0".into()));
        for bad in [&[][..], &[2, 0, 0], &[1, 5, b'a'], &[1, 1, 0xff, 0]] {
            assert!(parse_app(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_app_gets_the_words_the_holder_needs() {
        assert_eq!(classify("Bitcoin Test", "2.4.6", Network::Regtest), None);
        assert_eq!(classify("Bitcoin", "2.1.0", Network::Bitcoin), None);
        assert!(matches!(
            classify("Bitcoin", "2.4.6", Network::Regtest),
            Some(DeviceState::WrongNetwork { needed, .. }) if needed == "Bitcoin Test"
        ));
        assert!(matches!(
            classify("Bitcoin Test", "2.0.9", Network::Testnet),
            Some(DeviceState::TooOld { .. })
        ));
        assert!(matches!(
            classify("Bitcoin Test", "junk", Network::Testnet),
            Some(DeviceState::TooOld { .. })
        ));
        assert_eq!(
            classify("BOLOS", "2.0.0", Network::Bitcoin),
            Some(DeviceState::AppNotOpen { open: "BOLOS".into() })
        );
        assert_eq!(
            classify("Ethereum", "1.9", Network::Bitcoin),
            Some(DeviceState::AppNotOpen { open: "Ethereum".into() })
        );
        assert_eq!(parse_version("2.4.6-rc1"), Some((2, 4, 6)));
    }
}
