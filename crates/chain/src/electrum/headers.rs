//! What a light client can check of the headers an Electrum server sends.
//!
//! A header's merkle root is what proves a transaction into a block, so a server that could
//! invent headers could "prove" any confirmation (of a cancel that never happened, say). Each
//! header is therefore checked for:
//! - **its own work**: its hash meets the target its bits encode, and that target is within
//!   the network's limit;
//! - **the difficulty its height requires**, where the network's rules let a light client
//!   tell: on mainnet and signet the bits are those of the first block of its 2,016-block
//!   period, and at a period boundary the retarget computed from the previous period; on
//!   regtest, the fixed minimum difficulty. Testnets allow minimum-difficulty blocks whenever
//!   blocks are slow, so there a light client can only check each header's own work.
//!
//! What it cannot check: which of two valid branches carries the most work beyond the headers
//! it asked for. A server can still hide transactions; towers on independent backends cover
//! that.

use bitcoin::block::Header;
use bitcoin::params::Params;
use bitcoin::pow::CompactTarget;
use bitcoin::{BlockHash, Network};

/// Blocks per difficulty period.
pub const DIFFICULTY_PERIOD: u32 = 2_016;

/// The network whose genesis block hashes to `genesis`.
pub fn network_of(genesis: &BlockHash) -> Option<Network> {
    [Network::Bitcoin, Network::Testnet, Network::Testnet4, Network::Signet, Network::Regtest]
        .into_iter()
        .find(|n| bitcoin::constants::genesis_block(*n).block_hash() == *genesis)
}

/// A network's header rules.
#[derive(Debug, Clone)]
pub struct HeaderRules {
    params: Params,
}

impl HeaderRules {
    /// The rules of `network`.
    pub fn new(network: Network) -> HeaderRules {
        HeaderRules { params: Params::new(network) }
    }

    /// The network.
    pub fn network(&self) -> Network {
        self.params.network
    }

    /// A header's own proof of work: its hash meets its target, within the network's limit.
    pub fn check_work(&self, height: u32, header: &Header) -> Result<BlockHash, String> {
        let target = header.target();
        if target > self.params.max_attainable_target {
            return Err(format!("the header at height {height} claims a target above the network's limit"));
        }
        header.validate_pow(target).map_err(|_| {
            format!("the header at height {height} does not carry the proof of work its bits claim")
        })
    }

    /// The heights whose headers [`HeaderRules::check_difficulty`] needs to judge `height`.
    pub fn needed(&self, height: u32) -> Vec<u32> {
        if !self.checks_difficulty() || height == 0 {
            return Vec::new();
        }
        if height.is_multiple_of(DIFFICULTY_PERIOD) {
            vec![height - 1, height - DIFFICULTY_PERIOD]
        } else {
            vec![height - height % DIFFICULTY_PERIOD]
        }
    }

    /// Whether the network's difficulty can be checked by a light client.
    fn checks_difficulty(&self) -> bool {
        self.params.no_pow_retargeting || !self.params.allow_min_difficulty_blocks
    }

    /// The header's bits are those its height requires; `known` gives the (already checked)
    /// headers [`HeaderRules::needed`] names.
    pub fn check_difficulty(
        &self,
        height: u32,
        header: &Header,
        known: &dyn Fn(u32) -> Option<Header>,
    ) -> Result<(), String> {
        if !self.checks_difficulty() || height == 0 {
            return Ok(());
        }
        let expected = if self.params.no_pow_retargeting {
            self.params.max_attainable_target.to_compact_lossy()
        } else if height.is_multiple_of(DIFFICULTY_PERIOD) {
            let missing = || format!("the headers before height {height} are missing");
            let last = known(height - 1).ok_or_else(missing)?;
            let first = known(height - DIFFICULTY_PERIOD).ok_or_else(missing)?;
            let timespan = u64::from(last.time.saturating_sub(first.time));
            CompactTarget::from_next_work_required(last.bits, timespan, &self.params)
        } else {
            let start = height - height % DIFFICULTY_PERIOD;
            known(start).ok_or_else(|| format!("the header at height {start} is missing"))?.bits
        };
        if header.bits != expected {
            return Err(format!(
                "the header at height {height} has bits {:#010x}; the network's rules require {:#010x}",
                header.bits.to_consensus(),
                expected.to_consensus()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bitcoin::block::Version;
    use bitcoin::hashes::Hash;
    use bitcoin::TxMerkleNode;

    use super::*;

    fn header(prev: BlockHash, bits: u32, time: u32) -> Header {
        Header {
            version: Version::ONE,
            prev_blockhash: prev,
            merkle_root: TxMerkleNode::all_zeros(),
            time,
            bits: CompactTarget::from_consensus(bits),
            nonce: 0,
        }
    }

    #[test]
    fn each_network_is_known_by_its_genesis() {
        for n in [Network::Bitcoin, Network::Testnet, Network::Testnet4, Network::Signet, Network::Regtest] {
            assert_eq!(network_of(&bitcoin::constants::genesis_block(n).block_hash()), Some(n));
        }
        assert_eq!(network_of(&BlockHash::all_zeros()), None);
    }

    #[test]
    fn a_header_must_carry_the_work_its_bits_claim() {
        let rules = HeaderRules::new(Network::Bitcoin);
        let genesis = bitcoin::constants::genesis_block(Network::Bitcoin);
        // Mainnet block 1, as mined.
        let mut one = header(genesis.block_hash(), 0x1d00ffff, 1_231_469_665);
        one.merkle_root = "0e3e2357e806b6cdb1f70b54c3a3a17b6714ee1f0e68bebb44a74b1efd512098".parse().unwrap();
        one.nonce = 2_573_394_689;
        assert_eq!(
            rules.check_work(1, &one).unwrap().to_string(),
            "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048"
        );
        // A forged merkle root (a "proof" of some other transaction): no longer meets its target.
        let mut forged = one;
        forged.merkle_root = TxMerkleNode::from_byte_array([7; 32]);
        assert!(rules.check_work(1, &forged).unwrap_err().contains("proof of work"));
        // Regtest's trivial target is far above mainnet's limit.
        let easy = header(genesis.block_hash(), 0x207fffff, 1_231_469_665);
        assert!(rules.check_work(1, &easy).unwrap_err().contains("limit"));
    }

    #[test]
    fn the_bits_are_those_the_height_requires() {
        let rules = HeaderRules::new(Network::Bitcoin);
        let prev = BlockHash::all_zeros();
        let period_bits = 0x1c0ffff0;
        let start = header(prev, period_bits, 1_000_000);
        let known = |h: u32| match h {
            4032 => Some(start),
            // The period took exactly two weeks: the retarget keeps the target.
            6047 => Some(header(prev, period_bits, 1_000_000 + 14 * 24 * 3600)),
            _ => None,
        };
        assert_eq!(rules.needed(4040), vec![4032]);
        assert!(rules.check_difficulty(4040, &header(prev, period_bits, 0), &known).is_ok());
        let e = rules.check_difficulty(4040, &header(prev, 0x1d00ffff, 0), &known).unwrap_err();
        assert!(e.contains("require"), "{e}");
        assert_eq!(rules.needed(6048), vec![6047, 4032]);
        assert!(rules.check_difficulty(6048, &header(prev, period_bits, 0), &known).is_ok());
        assert!(rules.check_difficulty(6048, &header(prev, 0x1d00ffff, 0), &known).is_err());
        // Regtest: always its fixed minimum difficulty.
        let regtest = HeaderRules::new(Network::Regtest);
        assert!(regtest.check_difficulty(5, &header(prev, 0x207fffff, 0), &|_| None).is_ok());
        assert!(regtest.check_difficulty(5, &header(prev, 0x1d00ffff, 0), &|_| None).is_err());
        // Testnets: minimum-difficulty blocks are allowed, only the work itself is checked.
        assert!(HeaderRules::new(Network::Testnet).needed(4040).is_empty());
    }
}
