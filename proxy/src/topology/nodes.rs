//! A shard's nodes while Rampart runs: nodes join (a reload adds them)
//! and leave (retired in place), but none ever moves, so an index names
//! the same node for the life of the process and a reference to one stays
//! valid without a lock: the primary is kept as an index, routers keep
//! tables of indices, and the request path reads the list on every command.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::Node;

/// The most nodes a shard can have had while running (retired ones
/// included): twice what a configuration may name.
pub const MAX_NODES: usize = 2 * crate::config::MAX_NODES_IN_FILE;

pub struct NodeList {
    slots: Box<[OnceLock<Arc<Node>>]>,
    len: AtomicUsize,
    /// Serialises appends (reads take no lock).
    append: Mutex<()>,
}

/// A shard has had [`MAX_NODES`] nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a shard can have at most {MAX_NODES} nodes")]
pub struct Full;

impl NodeList {
    pub fn new(nodes: Vec<Arc<Node>>) -> NodeList {
        let list = NodeList {
            slots: (0..MAX_NODES).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
            append: Mutex::new(()),
        };
        for node in nodes.into_iter().take(MAX_NODES) {
            let _ = list.push(node);
        }
        list
    }

    /// Nodes ever in the list, retired ones included.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, index: usize) -> Option<&Arc<Node>> {
        if index >= self.len() {
            return None;
        }
        self.slots.get(index)?.get()
    }

    /// Every node in order, retired ones included (positions are indices).
    pub fn iter(&self) -> Iter<'_> {
        self.slots[..self.len()].iter().filter_map(OnceLock::get)
    }

    /// Appends `node`; returns its index.
    pub fn push(&self, node: Arc<Node>) -> Result<usize, Full> {
        let _guard = self.append.lock().unwrap_or_else(|e| e.into_inner());
        let index = self.len.load(Ordering::Acquire);
        let slot = self.slots.get(index).ok_or(Full)?;
        let _ = slot.set(node);
        // Published only once the slot is set: readers never see an empty one.
        self.len.store(index + 1, Ordering::Release);
        Ok(index)
    }

    pub fn first(&self) -> Option<&Arc<Node>> {
        self.get(0)
    }

    pub fn to_vec(&self) -> Vec<Arc<Node>> {
        self.iter().cloned().collect()
    }
}

/// The nodes of a [`NodeList`], in order.
pub type Iter<'a> = std::iter::FilterMap<
    std::slice::Iter<'a, OnceLock<Arc<Node>>>,
    fn(&OnceLock<Arc<Node>>) -> Option<&Arc<Node>>,
>;

impl<'a> IntoIterator for &'a NodeList {
    type Item = &'a Arc<Node>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl std::ops::Index<usize> for NodeList {
    type Output = Arc<Node>;

    fn index(&self, index: usize) -> &Arc<Node> {
        match self.get(index) {
            Some(node) => node,
            None => panic!("node index {index} out of {} nodes", self.len()),
        }
    }
}
