//! The one handler core behind `/v1/chat/completions` and `/v1/completions`.
//!
//! An [`Endpoint`] says only what differs between the two: its body type, how its own fields
//! (the logprobs flags, `echo`, `best_of`) map onto the engine's parameters, how its prompts
//! become token ids, and how engine events become its chunks ([`ChunkFormat`]). Everything
//! else is here, once: read the body, find the model, let the engine validate, prepare the
//! prompts off the async workers, fit each prompt, submit all or none, then stream the chunks
//! or fold them into one answer. Because the whole answer is the fold of the very chunks a
//! stream would send, streaming and non-streaming cannot disagree.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use lumen_engine::{Api, GenerationParams, Tokenizer, Usage, ValidParams};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::params::GenFields;
use super::response::{Envelope, Fold};
use super::structured::ConstraintFields;
use super::{deadline, prepare, Meta};
use crate::error::ServerError;
use crate::extract::{parse_json, JsonBody};
use crate::gen::{submit_all, GenEvent, Generation};
use crate::sse::stream_response;
use crate::state::{AppState, ChatServed};
use crate::tenancy::meter::EventInfo;
use crate::tenancy::{Principal, RequestCtx};

/// One tokenized prompt and the text it came from.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// Token ids.
    pub ids: Vec<u32>,
    /// The text (echoed by completions).
    pub text: String,
}

/// Turns one request's generation events into an endpoint's chunks.
pub trait ChunkFormat: Send + 'static {
    /// A choice inside a streamed chunk.
    type Choice: Serialize + Send + 'static;
    /// A choice of the whole (non-streaming) answer.
    type FinalChoice: Serialize;
    /// The chunk's `object` name.
    const OBJECT: &'static str;

    /// Id, time and model of every object.
    fn meta(&self) -> &Meta;
    /// Whether chunks carry `"usage": null` and the stream ends with a usage chunk.
    fn include_usage(&self) -> bool;
    /// Chunks sent before any event (chat's role delta, echoed prompts).
    fn start(&mut self, out: &mut Vec<Envelope<Self::Choice>>);
    /// Chunks for one event.
    fn event(&mut self, ev: GenEvent, out: &mut Vec<Envelope<Self::Choice>>);
    /// The whole answer before any chunk is folded in.
    fn empty_answer(&self, choices: usize) -> Envelope<Self::FinalChoice>;

    /// A chunk with `choices`.
    fn chunk(&self, choices: Vec<Self::Choice>) -> Envelope<Self::Choice> {
        Envelope::new(self.meta(), Self::OBJECT, choices, self.include_usage())
    }

    /// The last chunk of a stream that asked for usage (`choices: []`).
    fn usage_chunk(&self, usage: Usage) -> Envelope<Self::Choice> {
        let mut c = Envelope::new(self.meta(), Self::OBJECT, Vec::new(), false);
        c.usage = Some(Some(usage.into()));
        c
    }
}

/// What distinguishes one generation endpoint from the other.
pub trait Endpoint: 'static {
    /// Which API shape (names parameters in errors).
    const API: Api;
    /// Response id prefix (`chatcmpl`, `cmpl`).
    const ID_PREFIX: &'static str;
    /// The endpoint's own body fields.
    type Body: DeserializeOwned + Send + 'static;
    /// Its chunks.
    type Format: ChunkFormat;

    /// The model asked for.
    fn model_name(body: &Self::Body) -> &str;
    /// Maps the endpoint's own fields onto `params`.
    fn map_params(body: &Self::Body, params: &mut GenerationParams);
    /// Renders and tokenizes the prompts (runs on the blocking pool); `params` carry the
    /// tools a chat template renders.
    fn prompts(
        body: Self::Body,
        model: &ChatServed,
        params: &ValidParams,
    ) -> Result<Vec<Prompt>, ServerError>;
    /// The chunk format for one request.
    fn format(
        meta: Meta,
        tokenizer: Arc<Tokenizer>,
        params: &ValidParams,
        prompts: Vec<Prompt>,
        include_usage: bool,
    ) -> Self::Format;
}

/// The axum handler of endpoint `E` (`post(handler::<Chat>)`).
pub async fn handler<E: Endpoint>(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ServerError>
where
    Envelope<<E::Format as ChunkFormat>::FinalChoice>: Fold<<E::Format as ChunkFormat>::Choice>,
{
    serve::<E>(state, ctx.map(|Extension(c)| c), body).await
}

/// Whether `principal` may use model `name` (by its own name or the one an alias points to);
/// a model it may not use is answered as if it did not exist.
pub fn check_model(state: &AppState, principal: &Principal, name: &str) -> Result<(), ServerError> {
    let allowed = principal.allows_model(name)
        || state
            .manager()
            .resolve(name)
            .is_ok_and(|target| principal.allows_model(&target));
    if allowed {
        Ok(())
    } else {
        Err(ServerError::ModelNotFound(name.to_string()))
    }
}

/// Serves one generation request of endpoint `E`.
pub async fn serve<E: Endpoint>(
    state: AppState,
    ctx: Option<Arc<RequestCtx>>,
    body: Bytes,
) -> Result<Response, ServerError>
where
    Envelope<<E::Format as ChunkFormat>::FinalChoice>: Fold<<E::Format as ChunkFormat>::Choice>,
{
    let arrived = Instant::now();
    // Two typed passes over the bytes, off the async workers; no JSON tree in between.
    let (req, fields, constraint, keep_alive) = prepare(move || {
        Ok((
            parse_json::<E::Body>(&body)?,
            parse_json::<GenFields>(&body)?,
            parse_json::<ConstraintFields>(&body)?,
            crate::manager::keep_alive::from_body(&body)?,
        ))
    })
    .await?;
    let constraint = constraint.to_spec(E::API)?;
    let principal = ctx
        .as_ref()
        .map_or(Principal::Open, |c| c.principal.clone());
    check_model(&state, &principal, E::model_name(&req))?;
    let model = state
        .chat_model(Some(E::model_name(&req)), keep_alive)
        .await?;
    state.ensure_accepting()?;
    let (mut params, transport) = fields.split(E::API, principal.caller());
    params.cache_salt = principal.cache_salt(params.cache_salt.take());
    params.priority = crate::tenancy::clamp_priority(
        params.priority.take(),
        principal.key().and_then(|k| k.limits.max_priority),
    );
    if ctx.as_ref().is_some_and(|c| c.batch.is_some()) {
        // A batch item always runs at the lowest priority: the scheduler gives it only the
        // capacity interactive requests leave free, and preempts it first.
        params.priority = Some(lumen_engine::PriorityInput::Name("batch".into()));
    }
    E::map_params(&req, &mut params);
    params.constraint = constraint;
    let mut valid = model.handle.validate(params)?;
    let m = model.clone();
    // Grammar compilation and template rendering both take real work: off the async workers.
    let (valid, prompts) = prepare(move || {
        valid.compile_constraint(m.handle.constraints())?;
        let prompts = E::prompts(req, &m, &valid)?;
        Ok((valid, prompts))
    })
    .await?;
    let max_prompts = state.limits().max_prompts;
    if prompts.len() > max_prompts {
        return Err(ServerError::param(
            E::API.prompt_param(),
            format!("at most {max_prompts} prompts per request"),
        ));
    }
    let requests = prompts
        .iter()
        .map(|p| valid.for_prompt(p.ids.clone(), model.handle.info()))
        .collect::<Result<Vec<_>, _>>()?;
    // Admission: the worst case (every prompt plus the most every choice may generate) is
    // reserved against the key's limits before the engine sees anything.
    let cost: u64 = requests
        .iter()
        .map(|r| (r.prompt_tokens() + r.max_new_tokens()) as u64)
        .sum();
    let meta = Meta::new(&state, E::ID_PREFIX, &model.name);
    let mut meter = state
        .tenancy()
        .admit(
            ctx.as_deref(),
            cost,
            EventInfo {
                request_id: meta.id.clone(),
                model: model.name.clone(),
                endpoint: match E::API {
                    Api::Chat => "chat.completions",
                    Api::Completions => "completions",
                },
                arrived,
            },
        )
        .await?;
    let streams = match submit_all(&model.handle, requests) {
        Ok(s) => s,
        Err(e) => {
            meter.set_outcome(lumen_store::Outcome::Error);
            return Err(e);
        }
    };
    for (s, _) in &streams {
        meter.add_compute(s.compute_time());
    }
    tracing::debug!(model = %model.name, prompts = prompts.len(), n = valid.n(), stream = transport.stream, user = transport.user.as_deref().unwrap_or(""), "generation");
    let gen = Generation::new(
        streams,
        valid.n(),
        arrived,
        deadline(&state, arrived),
        model.metrics.clone(),
    )
    .with_meter(meter);
    let fmt = E::format(
        meta,
        model.handle.tokenizer().clone(),
        &valid,
        prompts,
        transport.include_usage,
    );
    if transport.stream {
        return Ok(stream_response(gen, fmt));
    }
    let answer = collect(gen, fmt).await?;
    Ok(Json(answer).into_response())
}

/// Runs `gen` to the end and folds every chunk `fmt` makes of it into the whole answer.
pub async fn collect<F: ChunkFormat>(
    mut gen: Generation,
    mut fmt: F,
) -> Result<Envelope<F::FinalChoice>, ServerError>
where
    Envelope<F::FinalChoice>: Fold<F::Choice>,
{
    let mut answer = fmt.empty_answer(gen.num_choices());
    let mut chunks = Vec::new();
    fmt.start(&mut chunks);
    loop {
        for c in chunks.drain(..) {
            answer.fold(c);
        }
        match gen.next().await? {
            Some(ev) => fmt.event(ev, &mut chunks),
            None => break,
        }
    }
    answer.usage = Some(Some(gen.usage().into()));
    Ok(answer)
}
