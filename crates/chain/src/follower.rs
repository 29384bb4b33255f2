//! [`Follower`]: turns polls of any backend into an ordered stream of connected and
//! disconnected blocks across reorgs, and new mempool transactions.

use std::collections::HashSet;

use bitcoin::consensus::deserialize;
use bitcoin::{Block, BlockHash, Transaction, Txid};

use crate::{BackendError, BlockId, ChainBackend};

/// What the follower reports, in chain order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockEvent {
    /// A block joined the active chain.
    Connected {
        /// Its height.
        height: u32,
        /// Its hash.
        hash: BlockHash,
        /// The block, serialized.
        raw: Vec<u8>,
        /// The backend's tip when the poll that brought it began: a block below it was mined
        /// before anything decided on it could reach the network (catching up).
        tip: u32,
    },
    /// A block left the active chain; reported tip first.
    Disconnected {
        /// The height it had.
        height: u32,
        /// Its hash.
        hash: BlockHash,
    },
}

impl BlockEvent {
    /// A connected block, deserialized (tests and small consumers; a tower scans `raw`).
    pub fn block(&self) -> Option<Block> {
        match self {
            BlockEvent::Connected { raw, .. } => deserialize(raw).ok(),
            BlockEvent::Disconnected { .. } => None,
        }
    }
}

/// Blocks fetched per round trip when catching up.
const FETCH_BATCH: u32 = 500;

/// Follows the active chain through any backend, turning polls into an ordered stream of
/// connections and disconnections, across reorgs (up to the depth it remembers).
pub struct Follower {
    /// The most recent active blocks we reported, oldest first.
    recent: Vec<BlockId>,
    depth: usize,
    /// With nothing remembered, start at the backend's tip instead of genesis.
    from_tip: bool,
    seen_mempool: HashSet<Txid>,
    mempool_sequence: Option<u64>,
}

/// The follower met a reorg deeper than it remembers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FollowError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Every remembered block was reorged out; the follower did not move.
    #[error("reorg deeper than the {0} blocks remembered")]
    TooDeep(usize),
}

impl Follower {
    /// Starts after `last_processed` (a checkpoint), remembering `depth` blocks for reorgs.
    /// `known` may hold the checkpoint's recent ancestors, oldest first, ending with it.
    pub fn new(known: Vec<BlockId>, depth: usize) -> Follower {
        Follower {
            recent: known,
            depth: depth.max(1),
            from_tip: false,
            seen_mempool: HashSet::new(),
            mempool_sequence: None,
        }
    }

    /// A follower that starts at the backend's tip when first polled: blocks before it are
    /// never reported (a new tower has nothing to look for in them).
    pub fn from_tip(depth: usize) -> Follower {
        Follower { from_tip: true, ..Follower::new(Vec::new(), depth) }
    }

    /// The mempool as of the last [`Follower::poll_mempool`].
    pub fn mempool(&self) -> &HashSet<Txid> {
        &self.seen_mempool
    }

    /// The blocks remembered for reorgs, oldest first (persist them to resume after a restart).
    pub fn recent(&self) -> &[BlockId] {
        &self.recent
    }

    /// The last block reported connected.
    pub fn last(&self) -> Option<BlockId> {
        self.recent.last().copied()
    }

    /// Brings the follower to the backend's tip, returning what changed in order.
    pub fn poll(&mut self, backend: &dyn ChainBackend) -> Result<Vec<BlockEvent>, FollowError> {
        let mut events = Vec::new();
        self.poll_each(backend, &mut |e| {
            events.push(e);
            true
        })?;
        Ok(events)
    }

    /// Like [`Follower::poll`], handing each event to `on_event` as soon as it is known, while
    /// the next batch of blocks is already being fetched: catching up costs the fetching or
    /// the processing, whichever is slower, not both. `on_event` returns false to stop; the
    /// follower then stands at the last event handed over.
    pub fn poll_each(
        &mut self,
        backend: &dyn ChainBackend,
        on_event: &mut dyn FnMut(BlockEvent) -> bool,
    ) -> Result<(), FollowError> {
        let tip = backend.tip()?;
        if self.last() == Some(tip) {
            return Ok(());
        }
        if self.recent.is_empty() && self.from_tip {
            self.recent.push(tip);
            return Ok(());
        }
        // Find the newest remembered block still active; everything above it was reorged out.
        // Nothing changes until the fork point is known, so a reorg deeper than the window
        // leaves the follower where it was (and its caller decides, knowing that).
        let mut keep = self.recent.len();
        while keep > 0 {
            let top = self.recent[keep - 1];
            if backend.block_hash(top.height)? == Some(top.hash) {
                break;
            }
            keep -= 1;
        }
        if keep == 0 && !self.recent.is_empty() {
            return Err(FollowError::TooDeep(self.recent.len()));
        }
        while self.recent.len() > keep {
            let gone = self.recent.pop().expect("above the fork point");
            if !on_event(BlockEvent::Disconnected { height: gone.height, hash: gone.hash }) {
                return Ok(());
            }
        }
        let first = self.last().map(|b| b.height + 1).unwrap_or(0);
        if first > tip.height {
            return Ok(());
        }
        // Far behind (a restart, an outage): batches of blocks, one round trip each, fetched
        // one batch ahead of the consumer.
        std::thread::scope(|scope| {
            let (batches, received) = std::sync::mpsc::sync_channel::<Result<_, BackendError>>(1);
            scope.spawn(move || {
                let mut next = first;
                while next <= tip.height {
                    let count = (tip.height - next + 1).min(FETCH_BATCH);
                    let fetched = backend
                        .block_hashes(next..next + count)
                        .and_then(|hashes| Ok((next, backend.raw_blocks(&hashes)?, hashes)));
                    let done = match &fetched {
                        Ok((_, _, hashes)) => hashes.len() < count as usize,
                        Err(_) => true,
                    };
                    next += count;
                    // The consumer stopped (or failed): stop fetching.
                    if batches.send(fetched).is_err() || done {
                        break;
                    }
                }
            });
            for batch in received {
                let (mut height, raws, hashes) = batch?;
                for (hash, raw) in hashes.into_iter().zip(raws) {
                    let header: bitcoin::block::Header =
                        deserialize(raw.get(..80).ok_or_else(|| BackendError::Decode("short block".into()))?)
                            .map_err(|e| BackendError::Decode(e.to_string()))?;
                    if header.block_hash() != hash {
                        return Err(
                            BackendError::Decode(format!("block {hash} does not hash to itself")).into()
                        );
                    }
                    // The chain moved while we walked it: stop here, the next poll continues.
                    if self.last().is_some_and(|prev| header.prev_blockhash != prev.hash) {
                        return Ok(());
                    }
                    self.recent.push(BlockId { height, hash });
                    if !on_event(BlockEvent::Connected { height, hash, raw, tip: tip.height }) {
                        return Ok(());
                    }
                    height += 1;
                }
                let excess = self.recent.len().saturating_sub(self.depth);
                self.recent.drain(..excess);
            }
            Ok(())
        })
    }

    /// Transactions that entered the mempool since the last call (fetched in full).
    pub fn poll_mempool(&mut self, backend: &dyn ChainBackend) -> Result<Vec<Transaction>, BackendError> {
        let snapshot = backend.mempool()?;
        if self.mempool_sequence == Some(snapshot.sequence) {
            return Ok(Vec::new());
        }
        self.mempool_sequence = Some(snapshot.sequence);
        let now: HashSet<Txid> = snapshot.txids.iter().copied().collect();
        let mut new = Vec::new();
        for txid in &snapshot.txids {
            if !self.seen_mempool.contains(txid) {
                if let Some(tx) = backend.transaction(txid)? {
                    new.push(tx);
                }
            }
        }
        self.seen_mempool = now;
        Ok(new)
    }
}
