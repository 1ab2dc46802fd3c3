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
}

/// Results of a solve, for every vertex the targets needed.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    results: HashMap<VertexId, Solved>,
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
                    shared.emit(Event::VertexFailed {
                        id,
                        error: e.to_string(),
                    });
                    shared.emit_cancelled();
                    return Err(e);
                }
            }
        }
        debug_assert_eq!(solved.len(), order.len());
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

async fn solve_one(
    shared: &Arc<Shared>,
    id: VertexId,
    vertex: &Vertex,
    inputs: &[(Arc<Vertex>, Solved)],
) -> Result<Solved, SolveError> {
    let input_results: Vec<ResultRef> = inputs.iter().map(|(_, s)| s.result.clone()).collect();
    // `VertexStarted` is sent when the vertex is answered from the cache or
    // gets a job slot, not while it waits for one (or fails before).
    let started = || {
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
    };
    let (keys, inputs_cacheable) = match input_keys(shared, vertex, inputs).await {
        Ok(k) => k,
        Err(e) => {
            started();
            return Err(vertex_error(id, vertex, input_results, e));
        }
    };
    let key = cache_key(&vertex.op, &keys);
    let cacheable = inputs_cacheable && !vertex.op.is_volatile();
    let index_error = |source| SolveError::CacheIndex {
        name: vertex.description.name.clone(),
        source,
    };
    let key_lock = shared.key_lock(key);
    let _same_key = if cacheable {
        Some(key_lock.lock().await)
    } else {
        None
    };

    if cacheable && !shared.no_cache && !vertex.ignore_cache {
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
                });
            }
            shared.cache.remove(&key).map_err(index_error)?;
        }
        if let Some(imported) = &shared.imported {
            let imported = Arc::clone(imported);
            let logger = VertexLogger::new(id, shared.events.clone());
            let loaded = tokio::task::spawn_blocking(move || imported.load(&key, &logger))
                .await
                .map_err(|e| SolveError::Internal(e.to_string()))?;
            if let Some(result) = loaded {
                let record = CacheRecord::new(key, result.clone(), vertex.description.name.clone());
                let cache = shared.cache.clone();
                tokio::task::spawn_blocking(move || cache.put(&record))
                    .await
                    .map_err(|e| SolveError::Internal(e.to_string()))?
                    .map_err(index_error)?;
                started();
                shared.emit(Event::VertexKey { id, key });
                shared.emit(Event::VertexCached {
                    id,
                    name: vertex.description.name.clone(),
                });
                return Ok(Solved {
                    result,
                    key,
                    cached: true,
                    cacheable,
                });
            }
        }
    }

    let permit = shared
        .permits
        .acquire()
        .await
        .map_err(|e| SolveError::Internal(e.to_string()))?;
    started();
    if cacheable {
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
        let record = CacheRecord::new(key, result.clone(), vertex.description.name.clone());
        // `put` takes the index's file lock, which maintenance may hold.
        let cache = shared.cache.clone();
        tokio::task::spawn_blocking(move || cache.put(&record))
            .await
            .map_err(|e| SolveError::Internal(e.to_string()))?
            .map_err(index_error)?;
    }
    shared.emit(Event::VertexDone {
        id,
        duration: start.elapsed(),
    });
    // Released after `VertexDone`, so progress never shows more than `jobs`
    // vertices running.
    drop(permit);
    Ok(Solved {
        result,
        key,
        cached: false,
        cacheable,
    })
}
