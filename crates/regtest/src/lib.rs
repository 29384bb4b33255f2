//! Vigil's embedded regtest chain: the ground truth every Vigil transaction is proven against.
//!
//! [`RegtestChain`] runs Bitcoin Core's validation engine (`libbitcoinkernel`, through the
//! `bitcoinkernel` crate) in-process on a private regtest chain that this crate mines itself.
//! Design goals, in order:
//!
//! 1. **The kernel is the only judge.** Blocks are assembled here with rust-bitcoin, but a block
//!    counts only if the kernel connects it: acceptance is read from the kernel's active tip,
//!    never from `process_block`'s return value (which says "new block" for many invalid
//!    blocks). A rejected block is reported with the kernel's own reason and changes nothing.
//! 2. **Behave like a node.** `submit` then `mine` works as with bitcoind: the pending pool
//!    refuses a transaction whose scripts fail the kernel's script verification (all consensus
//!    flags, taproot included, with every spent output), whose timelocks are not yet met for
//!    the next block, or that breaks Bitcoin Core's relay policy ([`relay`]): a valid
//!    transaction no node relays is useless to a watchtower.
//! 3. **Reorgs are first-class.** Blocks can be mined on any known parent; the heavier branch
//!    wins (the kernel decides), subscribers see disconnections then connections in order, and
//!    disconnected transactions return to the pending pool.
//! 4. **One verdict on scripts.** [`kernel::verify_inputs`] is the only place any Vigil crate
//!    asks the kernel whether a transaction's inputs are validly signed.
//! 5. **Pleasant in tests.** Temporary chains with in-memory databases start in milliseconds; a
//!    built-in faucet pays any script from the chain's own coinbases.
//!
//! What it is not: a p2p node, a package-relay implementation, or a fee estimator. A real
//! bitcoind remains the final judge of relay policy wherever one can run.

// Libraries log through `tracing`; printing is for binaries.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod accept;
pub mod chain;
mod error;
mod faucet;
pub mod kernel;
mod kernel_log;
mod mining;
pub mod pool;
pub mod relay;

pub use bitcoin;
pub use chain::{ChainEvent, Coin, MinedBlock, RegtestChain, Spend, TxStatus, COINBASE_MATURITY};
pub use error::{ChainError, SubmitError};
pub use mining::BlockBuilder;
pub use pool::PoolEntry;
pub use relay::RelayError;
