//! The chain's faucet: its own coinbases, spent to any script a test or the demo asks for.

use bitcoin::hashes::Hash;
use bitcoin::key::TapTweak;
use bitcoin::secp256k1::Message;
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::transaction::Version;
use bitcoin::{absolute, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};

use crate::chain::{Coin, RegtestChain, COINBASE_MATURITY};
use crate::ChainError;

impl RegtestChain {
    /// The script the chain's own coinbases pay to (a key only the chain holds).
    pub fn faucet_script(&self) -> &ScriptBuf {
        &self.faucet_script
    }

    /// Mature, unspent faucet coins (not spent in the pending pool either).
    fn faucet_coins(&self) -> Vec<(OutPoint, Coin)> {
        let next_height = self.height() + 1;
        let mut coins: Vec<(OutPoint, Coin)> = self
            .utxos
            .iter()
            .filter(|(op, c)| {
                c.txout.script_pubkey == self.faucet_script
                    && (!c.is_coinbase || next_height - c.height >= COINBASE_MATURITY)
                    && self.pool.spender(op).is_none()
            })
            .map(|(op, c)| (*op, c.clone()))
            .collect();
        coins.sort_by_key(|(op, c)| (c.height, op.txid, op.vout));
        coins
    }

    /// Pays `amount` to `script` from the chain's mature coinbases, through the pending pool
    /// (mine a block to confirm it). Mines the 101 blocks that mature the first coinbase if
    /// the faucet has nothing to spend yet.
    pub fn fund(&mut self, script: &ScriptBuf, amount: Amount) -> Result<OutPoint, ChainError> {
        if self.faucet_coins().is_empty() && self.height() < COINBASE_MATURITY + 1 {
            self.mine_to_height(COINBASE_MATURITY + 1)?;
        }
        let feerate_sat_per_vb = 2;
        let mut chosen = Vec::new();
        let mut total = Amount::ZERO;
        for (op, coin) in self.faucet_coins() {
            let fee = Amount::from_sat(feerate_sat_per_vb * (70 + 58 * (chosen.len() as u64 + 1)));
            if total >= amount + fee {
                break;
            }
            total += coin.txout.value;
            chosen.push((op, coin.txout));
        }
        let fee = Amount::from_sat(feerate_sat_per_vb * (70 + 58 * chosen.len() as u64));
        if total < amount + fee {
            return Err(ChainError::FaucetEmpty { wanted: amount, available: total });
        }
        let mut outputs = vec![TxOut { value: amount, script_pubkey: script.clone() }];
        let change = total - amount - fee;
        if change.to_sat() > 1_000 {
            outputs.push(TxOut { value: change, script_pubkey: self.faucet_script.clone() });
        }
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: chosen
                .iter()
                .map(|(op, _)| TxIn {
                    previous_output: *op,
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    ..Default::default()
                })
                .collect(),
            output: outputs,
        };
        let prevouts: Vec<TxOut> = chosen.iter().map(|(_, o)| o.clone()).collect();
        let tweaked = self.faucet.tap_tweak(&self.secp, None).to_keypair();
        let mut signatures = Vec::new();
        {
            let mut cache = SighashCache::new(&tx);
            for index in 0..tx.input.len() {
                let sighash = cache
                    .taproot_key_spend_signature_hash(
                        index,
                        &Prevouts::All(&prevouts),
                        TapSighashType::Default,
                    )
                    .expect("inputs and prevouts match");
                let msg = Message::from_digest(sighash.to_byte_array());
                signatures.push(self.secp.sign_schnorr(&msg, &tweaked));
            }
        }
        for (input, sig) in tx.input.iter_mut().zip(signatures) {
            input.witness = Witness::from_slice(&[sig.as_ref()]);
        }
        let txid = self.submit(&tx).map_err(ChainError::Faucet)?;
        Ok(OutPoint { txid, vout: 0 })
    }

    /// [`RegtestChain::fund`], then mines one block to confirm it.
    pub fn fund_confirmed(&mut self, script: &ScriptBuf, amount: Amount) -> Result<OutPoint, ChainError> {
        let outpoint = self.fund(script, amount)?;
        self.mine(1)?;
        Ok(outpoint)
    }
}
