//! `arp-hostile-memory`: a TEST-ONLY hostile policy, not an example. `evaluate` keeps
//! allocating 1 MiB blocks and writing to every page of them, so the host's memory limit
//! must stop it.

use arp_policy_sdk::{Decision, Policy, Request};

/// Size of one block.
const BLOCK: usize = 1 << 20;
/// A wasm page is 64 KiB; writing one byte per 4 KiB touches every page of every block.
const STRIDE: usize = 4096;

/// Allocates until the host stops it.
pub struct Memory;

impl Policy for Memory {
    fn evaluate(_request: &Request) -> Decision {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Growing linear memory is what the host limits, so reserve each block and
            // write one byte per page (cheap in fuel) rather than filling it: the hog
            // must hit the memory limit long before it could run out of fuel.
            let mut block: Vec<u8> = Vec::with_capacity(BLOCK);
            for byte in block.spare_capacity_mut().iter_mut().step_by(STRIDE) {
                byte.write(std::hint::black_box(1));
            }
            hoard.push(std::hint::black_box(block));
        }
    }
}

arp_policy_sdk::export_policy!(Memory);
