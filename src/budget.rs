//! [`RetryBudget`]: a retry budget shared by every clone of a layer, built on
//! tower's [`TpsBudget`].

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tower::retry::budget::{Budget, TpsBudget};

/// Basis points: 10 000 = 100 %.
const BP: u64 = 10_000;

/// A bad budget setting, reported instead of panicking (tower's
/// `TpsBudget::new` asserts on these).
#[derive(Clone, Debug, PartialEq)]
pub enum BudgetError {
    /// `ttl` must be within 1 s ..= 60 s.
    Ttl(Duration),
    /// `retry_ratio` must be a finite number within 0 ..= 1000.
    Ratio(f64),
    /// `min_per_sec` must be below `i32::MAX`.
    MinPerSec(u32),
}

impl fmt::Display for BudgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetError::Ttl(t) => write!(
                f,
                "retry budget ttl must be between 1 s and 60 s, got {t:?}"
            ),
            BudgetError::Ratio(r) => {
                write!(
                    f,
                    "retry budget ratio must be a finite number from 0 to 1000, got {r}"
                )
            }
            BudgetError::MinPerSec(m) => {
                write!(
                    f,
                    "retry budget min_per_sec must be below {}, got {m}",
                    i32::MAX
                )
            }
        }
    }
}

impl std::error::Error for BudgetError {}

struct Inner {
    tps: TpsBudget,
    /// Deposit credit in basis points, carried between requests.
    carry: AtomicU64,
    /// Basis points of a retry earned by one success.
    ratio_bp: u64,
    /// `TpsBudget::withdraw` checks and subtracts in two steps; concurrent
    /// withdrawals could both pass the check. This keeps them one at a time.
    withdraw: Mutex<()>,
}

/// A retry budget: retries may be at most a ratio of recent successes, plus
/// a small floor per second, shared by every clone of a layer.
///
/// It wraps [`tower::retry::budget::TpsBudget`] (tower's windowed budget)
/// and fixes two things on top of it:
///
/// - **Exact fractional ratios.** `TpsBudget` truncates `1 / ratio`, so a
///   ratio of 0.6 lets every deposit pay for a whole retry (tower issue
///   #857). Here the inner budget counts whole retries, and each success
///   deposits `ratio` of one, carried exactly in basis points: 10 successes
///   at 0.6 pay for exactly 6 retries, never more.
/// - **No race between withdrawals**, so the totals do not depend on how
///   many tasks withdraw at once.
///
/// Policies deposit when a request succeeds and withdraw just before a retry
/// is sent, so a retry that is never sent (readiness failed, deadline hit,
/// request not replayable) costs nothing.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_ollama_retry::RetryBudget;
///
/// let budget = RetryBudget::new(Duration::from_secs(1), 0, 0.6).unwrap();
/// for _ in 0..10 { budget.deposit(); }
/// let allowed = (0..10).filter(|_| budget.withdraw()).count();
/// assert_eq!(allowed, 6);
///
/// assert!(RetryBudget::new(Duration::from_secs(0), 0, 0.2).is_err());
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio_bp", &self.inner.ratio_bp)
            .field("tps", &self.inner.tps)
            .finish()
    }
}

impl RetryBudget {
    /// A budget where a deposit counts for `ttl` (1 s ..= 60 s),
    /// `min_per_sec` retries per second are always allowed, and each success
    /// pays for `retry_ratio` retries (0.2 = 20 %).
    pub fn new(ttl: Duration, min_per_sec: u32, retry_ratio: f64) -> Result<Self, BudgetError> {
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(BudgetError::Ttl(ttl));
        }
        if !retry_ratio.is_finite() || !(0.0..=1000.0).contains(&retry_ratio) {
            return Err(BudgetError::Ratio(retry_ratio));
        }
        if min_per_sec >= i32::MAX as u32 {
            return Err(BudgetError::MinPerSec(min_per_sec));
        }
        // Rounded down, so the budget never allows more than asked.
        let ratio_bp = (retry_ratio * BP as f64).floor() as u64;
        Ok(Self {
            inner: Arc::new(Inner {
                // A ratio of 1: one deposit is one retry, no truncation.
                tps: TpsBudget::new(ttl, min_per_sec, 1.0),
                carry: AtomicU64::new(0),
                ratio_bp,
                withdraw: Mutex::new(()),
            }),
        })
    }

    /// Records a success: credits `retry_ratio` of a retry.
    pub fn deposit(&self) {
        let inner = &*self.inner;
        if inner.ratio_bp == 0 {
            return;
        }
        let before = inner.carry.fetch_add(inner.ratio_bp, Ordering::AcqRel);
        // Whole retries earned by this deposit: the crossings of BP.
        let whole = (before + inner.ratio_bp) / BP - before / BP;
        for _ in 0..whole {
            inner.tps.deposit();
        }
    }

    /// Takes one retry from the budget; `false` when it has none.
    pub fn withdraw(&self) -> bool {
        let _one_at_a_time = self
            .inner
            .withdraw
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.inner.tps.withdraw()
    }
}

impl Budget for RetryBudget {
    fn deposit(&self) {
        RetryBudget::deposit(self)
    }

    fn withdraw(&self) -> bool {
        RetryBudget::withdraw(self)
    }
}
