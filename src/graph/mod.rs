//! The graph: ops over tensors, built once per model shape, then compiled into an
//! [`Executable`] that records the whole forward pass into one command encoder and submits it once.
//!
//! Tensors are either *external* (weights, KV cache, input/output buffers the caller owns) or
//! *intermediate* (produced by an op; the planner packs them into a few reused buffers).

#![warn(missing_docs)]

mod compile;
mod exec;
pub mod plan;

pub use exec::{Executable, Profile};

use crate::error::Result;
use crate::ops::Op;
use crate::tensor::{Tensor, TensorDesc};

/// A tensor of a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub usize);

#[derive(Debug)]
pub(crate) enum Storage {
    External(Tensor),
    Intermediate,
}

#[derive(Debug)]
pub(crate) struct GTensor {
    pub desc: TensorDesc,
    pub storage: Storage,
    /// Name for errors and debugging (weight name, or the producing node's label).
    #[allow(dead_code)]
    pub label: String,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub op: Box<dyn Op>,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
    pub label: String,
}

/// Ops over tensors in execution order; [`Graph::compile`] turns it into an [`Executable`].
#[derive(Debug, Default)]
pub struct Graph {
    pub(crate) tensors: Vec<GTensor>,
    pub(crate) nodes: Vec<Node>,
    prefix: String,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Label prefix for the nodes added next (e.g. `"blk.3."`), used in profiles and errors.
    pub fn set_prefix(&mut self, p: impl Into<String>) {
        self.prefix = p.into();
    }

    /// Bind a tensor the caller owns.
    pub fn external(&mut self, label: impl Into<String>, t: &Tensor) -> TensorId {
        self.tensors.push(GTensor {
            desc: t.desc.clone(),
            storage: Storage::External(t.clone()),
            label: label.into(),
        });
        TensorId(self.tensors.len() - 1)
    }

    /// The description (dtype, shape) of a tensor of the graph.
    pub fn desc(&self, id: TensorId) -> &TensorDesc {
        &self.tensors[id.0].desc
    }

    /// Add an op; shapes and dtypes are checked now, and the outputs are returned.
    pub fn add(&mut self, op: impl Op + 'static, inputs: &[TensorId]) -> Result<Vec<TensorId>> {
        let descs: Vec<&TensorDesc> = inputs.iter().map(|i| &self.tensors[i.0].desc).collect();
        let outs = op.infer(&descs)?;
        let label = format!("{}{}", self.prefix, op.name());
        let mut ids = Vec::with_capacity(outs.len());
        for d in outs {
            self.tensors.push(GTensor {
                desc: d,
                storage: Storage::Intermediate,
                label: label.clone(),
            });
            ids.push(TensorId(self.tensors.len() - 1));
        }
        self.nodes.push(Node {
            op: Box::new(op),
            inputs: inputs.to_vec(),
            outputs: ids.clone(),
            label,
        });
        Ok(ids)
    }

    /// Add an op with exactly one output.
    pub fn add1(&mut self, op: impl Op + 'static, inputs: &[TensorId]) -> Result<TensorId> {
        let name = op.name();
        let outs = self.add(op, inputs)?;
        match outs.as_slice() {
            [o] => Ok(*o),
            _ => Err(crate::error::Error::op(
                name,
                format!("expected one output, the op has {}", outs.len()),
            )),
        }
    }

    /// Add an op that only writes its inputs in place.
    pub fn add0(&mut self, op: impl Op + 'static, inputs: &[TensorId]) -> Result<()> {
        self.add(op, inputs).map(|_| ())
    }

    /// Number of op nodes.
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }
}
