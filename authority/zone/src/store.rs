//! The cluster store: the one place sources write cluster objects to and the query path reads the
//! index from. Writers rebuild the index and swap it in atomically; readers never lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::index::{IndexStats, ZoneConfig, ZoneIndex};
use crate::model::{ClusterState, Kind, Object};

/// What one publication did, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Published {
    /// Increases by one with every index swapped in; 0 is the empty index of a new store.
    pub generation: u64,
    pub serial: u32,
    pub build_time: Duration,
    pub stats: IndexStats,
}

pub struct ClusterStore {
    config: ZoneConfig,
    state: Mutex<ClusterState>,
    index: ArcSwap<ZoneIndex>,
    generation: watch::Sender<u64>,
    synced: AtomicBool,
}

impl ClusterStore {
    pub fn new(config: ZoneConfig) -> Arc<Self> {
        let index = ZoneIndex::empty(&config);
        Arc::new(Self {
            config,
            state: Mutex::new(ClusterState::default()),
            index: ArcSwap::from_pointee(index),
            generation: watch::channel(0).0,
            synced: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// The current index. Cheap: one atomic load and a reference count.
    pub fn index(&self) -> Arc<ZoneIndex> {
        self.index.load_full()
    }

    /// Whether a source has delivered a complete cluster at least once. Until then the store
    /// serves only the fixed records and `/ready` must stay false.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Notifies on every index swapped in (the value is the generation).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Object counts per kind of the current state.
    pub fn counts(&self) -> [(Kind, usize); 4] {
        self.lock().counts()
    }

    /// Replaces the whole cluster (a file reload, the end of an initial list) and marks the store
    /// synced. Returns `None` when nothing changed, so no index is rebuilt.
    pub fn replace(&self, objects: Vec<Object>) -> Option<Published> {
        self.replace_state(ClusterState::from_objects(objects))
    }

    /// [`ClusterStore::replace`] with a state assembled elsewhere (the end of an initial list).
    pub fn replace_state(&self, new: ClusterState) -> Option<Published> {
        let mut state = self.lock();
        let changed = *state != new || !self.is_synced();
        if !changed {
            return None;
        }
        *state = new;
        Some(self.publish(&state, true))
    }

    /// Applies incremental changes (watch events) and publishes the result.
    pub fn update(&self, change: impl FnOnce(&mut ClusterState)) -> Published {
        let mut state = self.lock();
        change(&mut state);
        self.publish(&state, false)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClusterState> {
        // A panic while holding the lock leaves a consistent state (every change is a whole
        // insert/remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Builds and swaps in the index for `state`, marks the store synced if `synced`, then
    /// notifies: whoever wakes on the new generation sees the index and the readiness it implies.
    fn publish(&self, state: &ClusterState, synced: bool) -> Published {
        let started = Instant::now();
        let previous = self.index.load().serial();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // SOA serials only grow (RFC 1982); seconds since the epoch, or one more than the last.
        let serial = u32::try_from(now).unwrap_or(u32::MAX).max(previous.wrapping_add(1));
        let index = ZoneIndex::build(state, &self.config, serial);
        let stats = index.stats();
        self.index.store(Arc::new(index));
        if synced {
            self.synced.store(true, Ordering::Release);
        }
        let mut generation = 0;
        self.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        Published { generation, serial, build_time: started.elapsed(), stats }
    }
}
