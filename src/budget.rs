//! A byte budget shared by the recordings of one worker VM: each recording is bounded by
//! `max_body_bytes`, and all of them together by `max_recording_bytes`, so a burst of
//! concurrent long streams can't exhaust the VM's memory (a failed allocation aborts it).

use std::cell::Cell;
use std::rc::Rc;

#[derive(Debug)]
pub struct MemoryBudget {
    used: Cell<usize>,
    max: usize,
}

impl MemoryBudget {
    pub fn new(max: usize) -> Rc<MemoryBudget> {
        Rc::new(MemoryBudget {
            used: Cell::new(0),
            max,
        })
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }
}

/// Bytes held against a budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Rc<MemoryBudget>,
    bytes: usize,
}

impl Reservation {
    pub fn new(budget: Rc<MemoryBudget>) -> Reservation {
        Reservation { budget, bytes: 0 }
    }

    /// Takes `n` more bytes; false (and nothing taken) if the budget can't give them.
    pub fn grow(&mut self, n: usize) -> bool {
        let used = self.budget.used.get();
        match used.checked_add(n) {
            Some(total) if total <= self.budget.max => {
                self.budget.used.set(total);
                self.bytes += n;
                true
            }
            _ => false,
        }
    }

    /// Gives back `n` of the bytes held (at most all of them).
    pub fn shrink(&mut self, n: usize) {
        let n = n.min(self.bytes);
        self.bytes -= n;
        self.budget
            .used
            .set(self.budget.used.get().saturating_sub(n));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .used
            .set(self.budget.used.get().saturating_sub(self.bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_and_return_the_budget() {
        let b = MemoryBudget::new(10);
        let mut r1 = Reservation::new(b.clone());
        let mut r2 = Reservation::new(b.clone());
        assert!(r1.grow(6));
        assert!(!r2.grow(5), "over budget");
        assert!(r2.grow(4));
        assert_eq!(b.used(), 10);
        drop(r1);
        assert_eq!(b.used(), 4);
        assert!(r2.grow(6));
        assert!(!r2.grow(usize::MAX), "no overflow");
        drop(r2);
        assert_eq!(b.used(), 0);
    }
}
