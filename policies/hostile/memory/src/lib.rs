//! `arp-hostile-memory`: a TEST-ONLY hostile policy, not an example. `evaluate` keeps
//! allocating 1 MiB blocks and writing to every page of them, so the host's memory limit
//! must stop it.

use arp_policy_sdk::{Decision, Policy, Request};

/// Size of one block.
const BLOCK: usize = 1 << 20;
/// One write per 64 KiB wasm page: enough to make each block real, few enough page
/// faults that the limit, not the clock, is what stops the hog on a loaded host.
const STRIDE: usize = 64 * 1024;

/// Allocates until the host stops it.
pub struct Memory;

impl Policy for Memory {
    fn evaluate(_request: &Request) -> Decision {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Growing linear memory is what the host limits, so reserve each block and
            // write one byte per wasm page (cheap in fuel and time) rather than fill it:
            // the hog must hit the memory limit long before fuel or the deadline.
            let mut block: Vec<u8> = Vec::with_capacity(BLOCK);
            for byte in block.spare_capacity_mut().iter_mut().step_by(STRIDE) {
                byte.write(std::hint::black_box(1));
            }
            hoard.push(std::hint::black_box(block));
        }
    }
}

arp_policy_sdk::export_policy!(Memory);
