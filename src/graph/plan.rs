//! Memory planning: intermediates whose lifetimes do not overlap share a buffer.
//!
//! Greedy by size: the largest tensors are placed first, each into the first existing slot
//! whose tenants' lifetimes are disjoint from its own, or into a new slot. Slots are sized by
//! their largest tenant. This is the classic "greedy by size" offset planner restricted to
//! whole buffers, which keeps every binding at offset 0 (no alignment padding to reason about).

#![warn(missing_docs)]

/// First and last node (inclusive) that touch a tensor, and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// Index of the first node that touches the tensor.
    pub first: usize,
    /// Index of the last node that touches it (inclusive).
    pub last: usize,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The result: slot sizes, and the slot of each tensor (same order as the input).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// Bytes of each shared buffer.
    pub slots: Vec<u64>,
    /// For each lifetime, the index of its buffer in `slots`.
    pub slot_of: Vec<usize>,
}

/// Pack the lifetimes into as few and as small buffers as the greedy-by-size rule finds.
pub fn assign(lifetimes: &[Lifetime]) -> Assignment {
    let mut order: Vec<usize> = (0..lifetimes.len()).collect();
    order.sort_by(|&a, &b| {
        lifetimes[b]
            .bytes
            .cmp(&lifetimes[a].bytes)
            .then(lifetimes[a].first.cmp(&lifetimes[b].first))
    });
    let mut slots: Vec<u64> = Vec::new();
    let mut tenants: Vec<Vec<usize>> = Vec::new();
    let mut slot_of = vec![usize::MAX; lifetimes.len()];
    for &t in &order {
        let lt = lifetimes[t];
        let free = tenants.iter().position(|ts| {
            ts.iter().all(|&o| {
                let ol = lifetimes[o];
                ol.last < lt.first || lt.last < ol.first
            })
        });
        let s = match free {
            Some(s) => s,
            None => {
                slots.push(0);
                tenants.push(Vec::new());
                slots.len() - 1
            }
        };
        slots[s] = slots[s].max(lt.bytes);
        tenants[s].push(t);
        slot_of[t] = s;
    }
    Assignment { slots, slot_of }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lt(first: usize, last: usize, bytes: u64) -> Lifetime {
        Lifetime { first, last, bytes }
    }

    #[test]
    fn disjoint_lifetimes_share_a_slot_and_overlapping_do_not() {
        // a chain x0 -> x1 -> x2 -> x3: neighbours overlap, every other one can share.
        let l = [lt(0, 1, 100), lt(1, 2, 100), lt(2, 3, 100), lt(3, 4, 50)];
        let a = assign(&l);
        assert_eq!(a.slots.len(), 2);
        for i in 0..l.len() {
            for j in 0..l.len() {
                let overlap = !(l[i].last < l[j].first || l[j].last < l[i].first);
                if i != j && overlap {
                    assert_ne!(a.slot_of[i], a.slot_of[j], "{i} and {j} overlap");
                }
            }
            assert!(a.slots[a.slot_of[i]] >= l[i].bytes);
        }
    }

    #[test]
    fn total_is_far_below_the_sum_for_a_long_chain() {
        let l: Vec<Lifetime> = (0..100).map(|i| lt(i, i + 1, 1000)).collect();
        let a = assign(&l);
        assert_eq!(a.slots.iter().sum::<u64>(), 2000);
    }
}
