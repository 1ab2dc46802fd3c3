//! Solving a build graph: vertices in dependency order, independent ones in
//! parallel (tokio tasks, at most `jobs` executing at once), each answered from
//! the cache index when its key is known, executed otherwise.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use rbuild_ops::{
    BuildGraph, CacheKey, Checksum, GraphError, InputKey, Selection, SourceLocation, Vertex,
    VertexId, cache_key,
};

use crate::cacheindex::{CacheIndex, CacheIndexError, CacheRecord};
use crate::executor::{ExecContext, ExecError, Executor, ImportedCache, ResultRef};
use crate::progress::{Event, EventSender, VertexLogger};

/// The outcome for one vertex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Solved {
    pub result: ResultRef,
    pub key: CacheKey,
    /// Answered from the cache index without executing.
    pub cached: bool,
    /// Whether `key` identifies the result (false for volatile ops such as the
    /// build context and for their dependents when no content checksum was
    /// available).
    pub cacheable: bool,
    /// What each input contributed to `key` (its key, or content checksums
    /// of what the op reads from it), for explaining misses.
    pub key_inputs: Vec<InputKey>,
    /// Answered by an imported record whose result is not here (yet):
    /// `result` is a placeholder until something needs it. The targets of a
    /// solve are always made available.
    pub lazy: Option<LazyRef>,
}

/// Results of a solve, for every vertex the targets needed.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    results: HashMap<VertexId, Solved>,
}

impl Solved {
    /// The result when it is here: `None` for a lazy result nothing needed.
    pub fn available_result(&self) -> Option<ResultRef> {
        match &self.lazy {
            None => Some(self.result.clone()),
            Some(l) => l.result_now(),
        }
    }
}

impl Outputs {
    pub fn get(&self, id: VertexId) -> Option<&Solved> {
        self.results.get(&id)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&VertexId, &Solved)> {
        self.results.iter()
    }
    pub fn len(&self) -> usize {
        self.results.len()
    }
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }
}

/// Why a solve failed.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// A vertex failed; the rest of the solve was cancelled.
    #[error("{name}: {source}")]
    Vertex {
        id: VertexId,
        name: String,
        location: Option<SourceLocation>,
        /// Results of the vertex's inputs: the last good states (for
        /// `rbuild run ID sh`).
        inputs: Vec<ResultRef>,
        #[source]
        source: ExecError,
    },
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("{name}: {source}")]
    CacheIndex {
        name: String,
        #[source]
        source: CacheIndexError,
    },
    #[error("internal solver error: {0}")]
    Internal(String),
}

/// The scheduler.
pub struct Solver {
    executor: Arc<dyn Executor>,
    cache: CacheIndex,
    imported: Option<Arc<dyn ImportedCache>>,
    jobs: usize,
    no_cache: bool,
}

impl Solver {
    /// A solver running at most `jobs` vertices at once (0 counts as 1).
    pub fn new(executor: Arc<dyn Executor>, cache: CacheIndex, jobs: usize) -> Self {
        Self {
            executor,
            cache,
            imported: None,
            jobs: jobs.max(1),
            no_cache: false,
        }
    }

    /// `--no-cache`: never answer from the cache (results are still recorded).
    #[must_use]
    pub fn with_no_cache(mut self, no_cache: bool) -> Self {
        self.no_cache = no_cache;
        self
    }

    /// `--cache-from`: records asked on a miss in the local index.
    #[must_use]
    pub fn with_imported(mut self, imported: Option<Arc<dyn ImportedCache>>) -> Self {
        self.imported = imported;
        self
    }

    pub fn cache(&self) -> &CacheIndex {
        &self.cache
    }

    /// Solve `targets` and everything they need. Each vertex is solved once,
    /// however often it is requested or needed. On the first failure the
    /// other running vertices are cancelled and the error names the vertex.
    pub async fn solve(
        &self,
        graph: &BuildGraph,
        targets: &[VertexId],
        events: EventSender,
    ) -> Result<Outputs, SolveError> {
        let order = graph.required(targets)?;
        let vertices: HashMap<VertexId, Arc<Vertex>> = order
            .iter()
            .map(|&id| {
                (
                    id,
                    Arc::new(graph.get(id).expect("required ids exist").clone()),
                )
            })
            .collect();
        // Unique inputs still unsolved, and who waits on whom.
        let mut waiting: HashMap<VertexId, usize> = HashMap::new();
        let mut dependents: HashMap<VertexId, Vec<VertexId>> = HashMap::new();
        for &id in &order {
            let mut inputs = vertices[&id].inputs.clone();
            inputs.sort_unstable();
            inputs.dedup();
            waiting.insert(id, inputs.len());
            for input in inputs {
                dependents.entry(input).or_default().push(id);
            }
        }
        let shared = Arc::new(Shared {
            executor: Arc::clone(&self.executor),
            cache: self.cache.clone(),
            imported: self.imported.clone(),
            permits: Semaphore::new(self.jobs),
            no_cache: self.no_cache,
            events,
            key_locks: std::sync::Mutex::new(HashMap::new()),
            in_progress: std::sync::Mutex::new(std::collections::BTreeSet::new()),
        });

        let mut solved: HashMap<VertexId, Solved> = HashMap::new();
        let mut tasks: JoinSet<(VertexId, Result<Solved, SolveError>)> = JoinSet::new();
        let mut ready: Vec<VertexId> = order
            .iter()
            .copied()
            .filter(|id| waiting[id] == 0)
            .collect();

        loop {
            for id in ready.drain(..) {
                let vertex = Arc::clone(&vertices[&id]);
                let inputs: Vec<(Arc<Vertex>, Solved)> = vertex
                    .inputs
                    .iter()
                    .map(|i| (Arc::clone(&vertices[i]), solved[i].clone()))
                    .collect();
                let shared = Arc::clone(&shared);
                tasks.spawn(async move {
                    let r = solve_one(&shared, id, &vertex, &inputs).await;
                    // Not reached when the task is aborted: what is left in
                    // the set was cancelled.
                    shared
                        .in_progress
                        .lock()
                        .expect("in-progress set")
                        .remove(&id);
                    (id, r)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (id, result) = match joined {
                Ok(pair) => pair,
                Err(e) => {
                    tasks.shutdown().await;
                    shared.emit_cancelled();
                    return Err(SolveError::Internal(e.to_string()));
                }
            };
            match result {
                Ok(s) => {
                    solved.insert(id, s);
                    for &d in dependents.get(&id).map_or(&[][..], Vec::as_slice) {
                        let n = waiting.get_mut(&d).expect("dependent is required");
                        *n -= 1;
                        if *n == 0 {
                            ready.push(d);
                        }
                    }
                }
                Err(e) => {
                    tasks.shutdown().await;
                    // The vertex that failed: a lazy input run by this one's
                    // task, or this one.
                    let failed = match &e {
                        SolveError::Vertex { id, .. } => *id,
                        _ => id,
                    };
                    shared
                        .in_progress
                        .lock()
                        .expect("in-progress set")
                        .remove(&failed);
                    shared.emit(Event::VertexFailed {
                        id: failed,
                        error: e.to_string(),
                    });
                    shared.emit_cancelled();
                    return Err(e);
                }
            }
        }
        debug_assert_eq!(solved.len(), order.len());
        // The targets' results are needed: lazy ones are made available.
        for t in targets {
            let Some(s) = solved.get_mut(t) else { continue };
            if s.lazy.is_none() {
                continue;
            }
            match ensure(&shared, s).await {
                Ok(r) => {
                    s.result = r;
                    s.lazy = None;
                }
                Err(e) => {
                    shared.emit(Event::VertexFailed {
                        id: *t,
                        error: e.to_string(),
                    });
                    return Err(e);
                }
            }
        }
        Ok(Outputs { results: solved })
    }
}

struct Shared {
    executor: Arc<dyn Executor>,
    cache: CacheIndex,
    imported: Option<Arc<dyn ImportedCache>>,
    permits: Semaphore,
    no_cache: bool,
    events: EventSender,
    /// One lock per cache key being solved: two different vertices with the
    /// same key (e.g. `COPY --from` of identical content) execute once, the
    /// second is then a cache hit.
    key_locks: std::sync::Mutex<HashMap<CacheKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Vertices that sent `VertexStarted` and have not finished.
    in_progress: std::sync::Mutex<std::collections::BTreeSet<VertexId>>,
}

impl Shared {
    fn key_lock(&self, key: CacheKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.key_locks.lock().expect("key lock table");
        Arc::clone(locks.entry(key).or_default())
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// After the tasks were shut down: report the ones that were cut short.
    fn emit_cancelled(&self) {
        let cancelled = std::mem::take(&mut *self.in_progress.lock().expect("in-progress set"));
        for id in cancelled {
            self.emit(Event::VertexCanceled { id });
        }
    }
}

fn vertex_error(
    id: VertexId,
    vertex: &Vertex,
    inputs: Vec<ResultRef>,
    source: ExecError,
) -> SolveError {
    SolveError::Vertex {
        id,
        name: vertex.description.name.clone(),
        location: vertex.description.location.clone(),
        inputs,
        source,
    }
}

/// Ask the executor for a content checksum on a blocking thread.
async fn checksum(
    shared: &Arc<Shared>,
    input: &Arc<Vertex>,
    result: &ResultRef,
    selection: Selection,
) -> Result<Option<Checksum>, ExecError> {
    let executor = Arc::clone(&shared.executor);
    let input = Arc::clone(input);
    let result = result.clone();
    tokio::task::spawn_blocking(move || executor.content_checksum(&input, &result, &selection))
        .await
        .map_err(|e| ExecError::msg(format!("content checksum task failed: {e}")))?
}

/// The key contributions of a vertex's inputs, and whether the key is
/// trustworthy.
async fn input_keys(
    shared: &Arc<Shared>,
    vertex: &Vertex,
    inputs: &[(Arc<Vertex>, Solved)],
) -> Result<(Vec<InputKey>, bool), ExecError> {
    let selections = vertex.op.content_selections();
    let mut keys = Vec::with_capacity(inputs.len());
    let mut cacheable = true;
    for (pos, (input_vertex, input)) in inputs.iter().enumerate() {
        let mut wanted: Vec<Selection> = selections
            .iter()
            .filter(|(i, _)| *i == pos)
            .map(|(_, s)| s.clone())
            .collect();
        if wanted.is_empty() && !input.cacheable {
            // A volatile input read as a whole: key on all of its content.
            wanted.push(Selection::all());
        }
        let mut sums = Vec::with_capacity(wanted.len());
        for selection in wanted {
            if let Some(sum) = checksum(shared, input_vertex, &input.result, selection).await? {
                sums.push(sum);
            } else {
                sums.clear();
                break;
            }
        }
        if sums.is_empty() {
            cacheable &= input.cacheable;
            keys.push(InputKey::Key(input.key));
        } else {
            keys.push(InputKey::Content(sums));
        }
    }
    Ok((keys, cacheable))
}

/// A vertex answered by an imported record whose result is not here yet:
/// its layers are unpacked (or, without usable layers, the vertex runs) only
/// when something needs the result, so results nobody needs are neither
/// unpacked nor run.
pub struct Lazy {
    id: VertexId,
    vertex: Arc<Vertex>,
    key: CacheKey,
    inputs: Vec<Solved>,
    result: tokio::sync::Mutex<Option<ResultRef>>,
}

/// A shared [`Lazy`] (compared by identity).
#[derive(Clone)]
pub struct LazyRef(Arc<Lazy>);

impl PartialEq for LazyRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for LazyRef {}

impl std::fmt::Debug for LazyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lazy({})", self.0.key)
    }
}

impl LazyRef {
    /// The result, if it was made available.
    pub fn result_now(&self) -> Option<ResultRef> {
        self.0.result.try_lock().ok().and_then(|r| r.clone())
    }
}

/// The result of `s`, making it available first when it is lazy: from the
/// imported record's layers, else by running the vertex (its inputs made
/// available the same way).
fn ensure<'a>(
    shared: &'a Arc<Shared>,
    s: &'a Solved,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<ResultRef, SolveError>> + Send + 'a>>
{
    Box::pin(async move {
        let Some(LazyRef(lazy)) = &s.lazy else {
            return Ok(s.result.clone());
        };
        let mut slot = lazy.result.lock().await;
        if let Some(r) = &*slot {
            return Ok(r.clone());
        }
        let name = lazy.vertex.description.name.clone();
        let index_error = |source| SolveError::CacheIndex {
            name: name.clone(),
            source,
        };
        if let Some(imported) = &shared.imported {
            let imported = Arc::clone(imported);
            let logger = VertexLogger::new(lazy.id, shared.events.clone());
            let key = lazy.key;
            let loaded = tokio::task::spawn_blocking(move || imported.load(&key, &logger))
                .await
                .map_err(|e| SolveError::Internal(e.to_string()))?;
            if let Some(result) = loaded {
                put_record(shared, lazy.key, &result, &name)
                    .await
                    .map_err(index_error)?;
                *slot = Some(result.clone());
                return Ok(result);
            }
        }
        // No usable layers: run it.
        let mut input_results = Vec::with_capacity(lazy.inputs.len());
        for input in &lazy.inputs {
            input_results.push(ensure(shared, input).await?);
        }
        let result = execute(
            shared,
            lazy.id,
            &lazy.vertex,
            (lazy.key, true),
            true,
            input_results,
        )
        .await?;
        *slot = Some(result.clone());
        Ok(result)
    })
}

async fn put_record(
    shared: &Arc<Shared>,
    key: CacheKey,
    result: &ResultRef,
    name: &str,
) -> Result<(), CacheIndexError> {
    let record = CacheRecord::new(key, result.clone(), name.to_owned());
    // `put` takes the index's file lock, which maintenance may hold.
    let cache = shared.cache.clone();
    tokio::task::spawn_blocking(move || cache.put(&record))
        .await
        .map_err(|e| CacheIndexError::Io(std::io::Error::other(e.to_string())))?
}

fn emit_started(shared: &Shared, id: VertexId, vertex: &Vertex) {
    shared
        .in_progress
        .lock()
        .expect("in-progress set")
        .insert(id);
    shared.emit(Event::VertexStarted {
        id,
        name: vertex.description.name.clone(),
        location: vertex.description.location.clone(),
    });
}

/// Runs `vertex` with a job slot, records its result and reports it (its
/// key too, unless `key_sent`: a lazy vertex reported it when answered).
async fn execute(
    shared: &Arc<Shared>,
    id: VertexId,
    vertex: &Vertex,
    (key, key_sent): (CacheKey, bool),
    cacheable: bool,
    input_results: Vec<ResultRef>,
) -> Result<ResultRef, SolveError> {
    let permit = shared
        .permits
        .acquire()
        .await
        .map_err(|e| SolveError::Internal(e.to_string()))?;
    emit_started(shared, id, vertex);
    if cacheable && !key_sent {
        shared.emit(Event::VertexKey { id, key });
    }
    let start = Instant::now();
    let ctx = ExecContext {
        id,
        key,
        logger: VertexLogger::new(id, shared.events.clone()),
    };
    let result = shared.executor.execute(vertex, &input_results, ctx).await;
    let result = result.map_err(|e| vertex_error(id, vertex, input_results, e))?;
    if cacheable {
        put_record(shared, key, &result, &vertex.description.name)
            .await
            .map_err(|source| SolveError::CacheIndex {
                name: vertex.description.name.clone(),
                source,
            })?;
    }
    shared.emit(Event::VertexDone {
        id,
        duration: start.elapsed(),
    });
    // Released after `VertexDone`, so progress never shows more than `jobs`
    // vertices running.
    drop(permit);
    Ok(result)
}

async fn solve_one(
    shared: &Arc<Shared>,
    id: VertexId,
    vertex: &Arc<Vertex>,
    inputs: &[(Arc<Vertex>, Solved)],
) -> Result<Solved, SolveError> {
    let placeholder: Vec<ResultRef> = inputs.iter().map(|(_, s)| s.result.clone()).collect();
    // `VertexStarted` is sent when the vertex is answered from the cache or
    // gets a job slot, not while it waits for one (or fails before).
    let started = || emit_started(shared, id, vertex);
    let index_error = |source| SolveError::CacheIndex {
        name: vertex.description.name.clone(),
        source,
    };
    let use_cache = !shared.no_cache && !vertex.ignore_cache;

    // An input that is lazy and read by content: its imported record may
    // know this vertex by its inputs' keys (the exporting machine's
    // content key), which spares unpacking it.
    let selections = vertex.op.content_selections();
    let lazy_content = selections
        .iter()
        .any(|(i, _)| inputs.get(*i).is_some_and(|(_, s)| s.lazy.is_some()));
    let mut by_inputs = None;
    if lazy_content && use_cache && inputs.iter().all(|(_, s)| s.cacheable) {
        if let Some(imported) = &shared.imported {
            let dep_keys: Vec<InputKey> =
                inputs.iter().map(|(_, s)| InputKey::Key(s.key)).collect();
            by_inputs = imported.key_by_inputs(&cache_key(&vertex.op, &dep_keys));
        }
    }
    let mut inputs: Vec<(Arc<Vertex>, Solved)> = inputs.to_vec();
    let (key, cacheable, key_inputs) = if let Some(k) = by_inputs {
        let dep_keys = inputs.iter().map(|(_, s)| InputKey::Key(s.key)).collect();
        (k, !vertex.op.is_volatile(), dep_keys)
    } else {
        // The lazy inputs read by content are needed now.
        for (pos, _) in &selections {
            if let Some((_, s)) = inputs.get_mut(*pos) {
                if s.lazy.is_some() {
                    let r = ensure(shared, s).await?;
                    s.result = r;
                    s.lazy = None;
                }
            }
        }
        let (keys, inputs_cacheable) = match input_keys(shared, vertex, &inputs).await {
            Ok(k) => k,
            Err(e) => {
                started();
                return Err(vertex_error(id, vertex, placeholder, e));
            }
        };
        (
            cache_key(&vertex.op, &keys),
            inputs_cacheable && !vertex.op.is_volatile(),
            keys,
        )
    };
    let key_lock = shared.key_lock(key);
    let _same_key = if cacheable {
        Some(key_lock.lock().await)
    } else {
        None
    };

    if cacheable && use_cache {
        if let Some(record) = shared.cache.get(&key).map_err(index_error)? {
            if shared.executor.result_exists(&record.result) {
                // Best effort: only feeds LRU pruning.
                let _ = shared.cache.touch(&key);
                started();
                shared.emit(Event::VertexKey { id, key });
                shared.emit(Event::VertexCached {
                    id,
                    name: vertex.description.name.clone(),
                });
                return Ok(Solved {
                    result: record.result,
                    key,
                    cached: true,
                    cacheable,
                    key_inputs,
                    lazy: None,
                });
            }
            shared.cache.remove(&key).map_err(index_error)?;
        }
        if shared.imported.as_ref().is_some_and(|c| c.has(&key)) {
            started();
            shared.emit(Event::VertexKey { id, key });
            shared.emit(Event::VertexCached {
                id,
                name: vertex.description.name.clone(),
            });
            let lazy = Lazy {
                id,
                vertex: Arc::clone(vertex),
                key,
                inputs: inputs.iter().map(|(_, s)| s.clone()).collect(),
                result: tokio::sync::Mutex::new(None),
            };
            return Ok(Solved {
                result: ResultRef::new(format!("lazy:{key}")),
                key,
                cached: true,
                cacheable,
                key_inputs,
                lazy: Some(LazyRef(Arc::new(lazy))),
            });
        }
    }

    let mut input_results = Vec::with_capacity(inputs.len());
    for (_, s) in &inputs {
        input_results.push(ensure(shared, s).await?);
    }
    let result = execute(shared, id, vertex, (key, false), cacheable, input_results).await?;
    Ok(Solved {
        result,
        key,
        cached: false,
        cacheable,
        key_inputs,
        lazy: None,
    })
}
