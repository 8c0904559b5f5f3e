//! Where each sequence of a [`super::Pool`] lives: a region of whole granules of the pooled
//! KV cache, sized per request, so one long conversation can use what short ones leave free.
//!
//! [`place`] finds a region of `need` rows for sequence `me` among the others: busy ones (a
//! request running) are never touched; idle ones (holding a finished request's rows, kept as a
//! prefix cache) may be overwritten, and the caller forgets what they held. It keeps `me`'s
//! own region when it is large enough, grows it in place when the rows after it allow, and
//! otherwise takes the lowest place that overwrites the fewest idle rows.

#![warn(missing_docs)]

/// Rows `base .. base + rows` of the pooled cache (both whole granules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First row.
    pub base: usize,
    /// Rows (a sequence in it holds `rows - 1` tokens: its token history needs one more word).
    pub rows: usize,
}

impl Region {
    /// One past the last row.
    pub fn end(&self) -> usize {
        self.base + self.rows
    }

    /// Rows this region shares with `o`.
    pub fn overlap(&self, o: &Region) -> usize {
        self.end()
            .min(o.end())
            .saturating_sub(self.base.max(o.base))
    }
}

/// One sequence's region as [`place`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// Its rows, if it has any.
    pub region: Option<Region>,
    /// Running a request: its rows may not move or be overwritten.
    pub busy: bool,
}

/// A region of at least `need` rows (rounded up to whole `granule`s) for sequence `me` in a
/// pool of `total` rows, or `None` while busy sequences leave no such run of rows. See the
/// module docs for the preferences.
pub fn place(
    total: usize,
    granule: usize,
    held: &[Held],
    me: usize,
    need: usize,
) -> Option<Region> {
    let g = granule.max(1);
    let rows = need.max(1).div_ceil(g) * g;
    if rows > total {
        return None;
    }
    let own = held.get(me).and_then(|h| h.region);
    if let Some(r) = own.filter(|r| r.rows >= rows) {
        return Some(r);
    }
    // (idle rows overwritten, not at own base, base): the smallest wins.
    let cost = |base: usize| -> Option<(usize, bool, usize)> {
        let cand = Region { base, rows };
        let mut lost = 0;
        for (i, h) in held.iter().enumerate() {
            let Some(r) = h.region.filter(|_| i != me) else {
                continue;
            };
            let o = cand.overlap(&r);
            if o > 0 && h.busy {
                return None;
            }
            lost += o;
        }
        Some((lost, own.is_none_or(|r| r.base != base), base))
    };
    (0..=(total - rows) / g)
        .filter_map(|i| cost(i * g))
        .min()
        .map(|(_, _, base)| Region { base, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(base: usize, rows: usize) -> Option<Region> {
        Some(Region { base, rows })
    }

    fn h(region: Option<Region>, busy: bool) -> Held {
        Held { region, busy }
    }

    #[test]
    fn keeps_a_large_enough_region_and_grows_in_place_when_it_can() {
        let held = [h(r(0, 64), false), h(r(64, 64), true), h(r(128, 64), false)];
        assert_eq!(place(256, 64, &held, 0, 40), r(0, 64));
        // Slot 2 grows over the free rows after it.
        assert_eq!(place(256, 64, &held, 2, 100), r(128, 128));
    }

    #[test]
    fn never_touches_busy_regions_and_overwrites_the_fewest_idle_rows() {
        let held = [
            h(r(0, 64), false),
            h(r(64, 64), true),
            h(r(128, 64), false),
            h(None, false),
        ];
        // 128 rows for slot 3: 0..128 and 64..192 hit the busy region; 128..256 overwrites
        // slot 2's 64 idle rows.
        assert_eq!(place(256, 64, &held, 3, 128), r(128, 128));
        // Nothing busy is free for 192 rows.
        assert_eq!(place(256, 64, &held, 3, 192), None);
        // More than the pool.
        assert_eq!(place(256, 64, &held, 3, 257), None);
        // With slot 1 idle too, the whole pool.
        let idle = [h(r(0, 64), false), h(r(64, 64), false), h(None, false)];
        assert_eq!(place(256, 64, &idle, 2, 256), r(0, 256));
    }

    #[test]
    fn prefers_free_rows_to_idle_ones_and_rounds_to_granules() {
        let held = [h(r(0, 64), false), h(None, false), h(r(192, 64), true)];
        assert_eq!(place(256, 64, &held, 1, 65), r(64, 128));
        assert_eq!(place(256, 64, &held, 1, 1), r(64, 64));
    }
}
