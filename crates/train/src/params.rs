//! Parameters by name: the dotted path of a parameter in its module tree (struct fields, enum
//! variants, vector indices: `layers.0.attention.query.Sara.values`), what checkpoints, parameter
//! counts and gradient comparisons are keyed by.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use std::collections::BTreeMap;

/// One parameter's name, shape, whether it is trained, and its values.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedParam {
    /// Dotted path.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Whether the method trains it (float parameters that require a gradient).
    pub trainable: bool,
    /// Values: f32 for float parameters, integers (as i64) for integer ones.
    pub values: Values,
}

/// A parameter's values.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// Float values.
    F32(Vec<f32>),
    /// Integer values.
    I64(Vec<i64>),
}

#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn enter(&mut self, name: &str, container: &str) {
        // Option containers are transparent; everything else names a level.
        let _ = container;
        self.0.push(name.to_string());
    }
    fn name(&self) -> String {
        self.0.join(".")
    }
}

struct Collect<'a> {
    path: Path,
    with_values: bool,
    keep: &'a dyn Fn(bool) -> bool,
    out: Vec<NamedParam>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.0.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        if !(self.keep)(t.is_require_grad()) {
            return;
        }
        self.out.push(NamedParam {
            name: self.path.name(),
            shape: t.dims().to_vec(),
            trainable: t.is_require_grad(),
            values: Values::F32(if self.with_values {
                crate::modules::values(&t)
            } else {
                Vec::new()
            }),
        });
    }
    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        if !(self.keep)(false) {
            return;
        }
        let t = param.val();
        let values = if self.with_values {
            t.clone()
                .into_data()
                .convert::<i64>()
                .into_vec::<i64>()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        self.out.push(NamedParam {
            name: self.path.name(),
            shape: t.dims().to_vec(),
            trainable: false,
            values: Values::I64(values),
        });
    }
}

/// Every parameter of `module` with its values, in visiting order.
pub fn named<B: Backend, M: Module<B>>(module: &M) -> Vec<NamedParam> {
    named_where(module, |_| true)
}

/// The parameters of `module` with their values, in visiting order, whose trainability passes
/// `keep` (integer tensors count as not trainable).
pub fn named_where<B: Backend, M: Module<B>>(
    module: &M,
    keep: impl Fn(bool) -> bool,
) -> Vec<NamedParam> {
    let mut c = Collect {
        path: Path::default(),
        with_values: true,
        keep: &keep,
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

/// (trainable, total) scalar parameters of `module` (integer index tensors not counted).
pub fn counts<B: Backend, M: Module<B>>(module: &M) -> (usize, usize) {
    let mut c = Collect {
        path: Path::default(),
        with_values: false,
        keep: &|_| true,
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
        .iter()
        .filter(|p| matches!(p.values, Values::F32(_)))
        .fold((0, 0), |(t, a), p| {
            let n: usize = p.shape.iter().product();
            (t + if p.trainable { n } else { 0 }, a + n)
        })
}

struct Grads<'a, B: AutodiffBackend> {
    path: Path,
    grads: &'a B::Gradients,
    out: BTreeMap<String, Vec<f32>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.0.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            self.out
                .insert(self.path.name(), crate::modules::values(&g));
        }
    }
}

/// The gradient of every parameter that has one, by name.
pub fn gradients<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
) -> BTreeMap<String, Vec<f32>> {
    let mut g = Grads {
        path: Path::default(),
        grads,
        out: BTreeMap::new(),
    };
    module.visit(&mut g);
    g.out
}

/// Why [`load`] could not apply a set of named values.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A stored value's shape differs from the parameter's.
    #[error("{name}: stored shape {stored:?}, the module's is {expected:?}")]
    Shape {
        /// Parameter.
        name: String,
        /// Shape in the store.
        stored: Vec<usize>,
        /// Shape in the module.
        expected: Vec<usize>,
    },
}

struct Load<'a> {
    path: Path,
    values: &'a BTreeMap<String, (Vec<usize>, Values)>,
    applied: Vec<String>,
    errors: Vec<LoadError>,
}

impl<B: Backend> ModuleMapper<B> for Load<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.0.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let name = self.path.name();
        let Some((shape, Values::F32(v))) = self.values.get(&name) else {
            return param;
        };
        let expected = param.dims().to_vec();
        if *shape != expected {
            self.errors.push(LoadError::Shape {
                name,
                stored: shape.clone(),
                expected,
            });
            return param;
        }
        self.applied.push(name);
        let (id, tensor, mapper) = param.consume();
        let grad = tensor.is_require_grad();
        let data = TensorData::new(v.clone(), tensor.shape());
        let mut fresh = Tensor::from_data(data, &tensor.device());
        if grad {
            fresh = fresh.require_grad();
        }
        Param::from_mapped_value(id, fresh, mapper)
    }
    fn map_int<const D: usize>(
        &mut self,
        param: Param<Tensor<B, D, Int>>,
    ) -> Param<Tensor<B, D, Int>> {
        let name = self.path.name();
        let Some((shape, Values::I64(v))) = self.values.get(&name) else {
            return param;
        };
        if *shape != param.dims().to_vec() {
            self.errors.push(LoadError::Shape {
                name,
                stored: shape.clone(),
                expected: param.dims().to_vec(),
            });
            return param;
        }
        self.applied.push(name);
        let (id, tensor, mapper) = param.consume();
        let data = TensorData::new(v.clone(), tensor.shape());
        Param::from_mapped_value(id, Tensor::from_data(data, &tensor.device()), mapper)
    }
}

/// `module` with every parameter named in `values` replaced (shapes must match; gradient
/// requirements and parameter ids are kept). Returns the names applied.
pub fn load<B: Backend, M: Module<B>>(
    module: M,
    values: &BTreeMap<String, (Vec<usize>, Values)>,
) -> Result<(M, Vec<String>), Vec<LoadError>> {
    let mut l = Load {
        path: Path::default(),
        values,
        applied: Vec::new(),
        errors: Vec::new(),
    };
    let module = module.map(&mut l);
    if l.errors.is_empty() {
        Ok((module, l.applied))
    } else {
        Err(l.errors)
    }
}
