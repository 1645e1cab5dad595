//! Pure translation between the OpenAI and Anthropic wire formats: requests, responses and streams, both ways.
//!
//! OpenAI client → Anthropic upstream: [`chat_to_messages_request`], [`messages_response_to_chat`],
//! [`MessagesToChatStream`]. Anthropic client → any (OpenAI-shaped) provider: [`messages_to_chat_request`],
//! [`chat_to_messages_response`], [`ChatToMessagesStream`].
//!
//! Requests can fail ([`TranslateError`], a client mistake naming the offending field); responses and streams
//! cannot, because whatever an upstream sends has some faithful rendering in the other format.
//!
//! Token accounting: OpenAI's `prompt_tokens` counts cached input, Anthropic's `input_tokens` does not (cache
//! reads and writes are reported beside it), so `prompt_tokens = input + cache_read + cache_creation` one way
//! and `input_tokens = prompt_tokens - cached_tokens` the other.

use serde_json::{Map, Value, json};

use crate::protocol::anthropic::{
    self, BlockDelta, ContentBlock, ErrorDetail, Message, MessageDeltaBody, MessagesRequest,
    MessagesResponse, StreamEvent, SystemPrompt, Tool, ToolChoice, ToolResultContent,
};
use crate::protocol::openai::{
    self, ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Choice, ChunkChoice, Delta,
    FunctionCall, FunctionCallDelta, PromptTokensDetails, StreamOptions, ToolCall, ToolCallDelta,
    finish, unix_now,
};

/// Joins texts that become one string: several system messages, several text blocks of a request.
const TEXT_SEPARATOR: &str = "\n\n";

/// A request that cannot be expressed in the target format; a client error naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TranslateError {
    /// Human-readable message, starting with the offending field.
    pub message: String,
    /// Path of the offending field in the client's request,
    /// e.g. `messages[2].tool_calls[0].function.arguments`.
    pub param: Option<String>,
}

impl TranslateError {
    fn at(param: impl Into<String>, problem: &str) -> Self {
        let param = param.into();
        Self {
            message: format!("{param}: {problem}"),
            param: Some(param),
        }
    }
}

// === OpenAI client → Anthropic upstream ===

/// Translates an OpenAI chat request into an Anthropic Messages request for `upstream_model`.
///
/// `system` and `developer` messages (wherever they are) become the system prompt; `tool` messages become
/// `tool_result` blocks of a user message; consecutive messages of the same role are merged, as Anthropic
/// wants the roles to alternate. OpenAI-only fields Anthropic would reject are dropped.
///
/// # Errors
///
/// A message, content part, tool or parameter that has no Anthropic rendering: an unknown role, a
/// non-image content part, tool call arguments that are not a JSON object, a malformed `stop` or `tools`.
pub fn chat_to_messages_request(
    req: &ChatRequest,
    upstream_model: &str,
    default_max_tokens: u32,
) -> Result<MessagesRequest, TranslateError> {
    let mut system = Vec::new();
    let mut messages: Vec<Message> = Vec::with_capacity(req.messages.len());
    for (i, msg) in req.messages.iter().enumerate() {
        let (role, content) = match msg.role.as_str() {
            "system" | "developer" => {
                let text = msg.text_content();
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            "user" => ("user", user_content(msg, i)?),
            "assistant" => {
                let blocks = assistant_blocks(msg, i)?;
                // Anthropic rejects empty messages; an empty assistant turn carries nothing anyway.
                if blocks.is_empty() {
                    continue;
                }
                ("assistant", anthropic::MessageContent::Blocks(blocks))
            }
            "tool" => ("user", tool_result_content(msg, i)?),
            other => {
                return Err(TranslateError::at(
                    format!("messages[{i}].role"),
                    &format!("role `{other}` cannot be sent to an Anthropic model"),
                ));
            }
        };
        push_merged(&mut messages, role, content);
    }

    let extra = &req.extra;
    let tools = openai_tools_to_anthropic(extra.get("tools"))?;
    let tool_choice = openai_tool_choice_to_anthropic(extra, tools.is_some())?;
    let mut passthrough = Map::new();
    if let Some(thinking) = extra.get("thinking") {
        passthrough.insert("thinking".to_owned(), thinking.clone());
    }
    Ok(MessagesRequest {
        model: upstream_model.to_owned(),
        max_tokens: req.output_limit().unwrap_or(default_max_tokens),
        messages,
        system: (!system.is_empty()).then(|| SystemPrompt::Text(system.join(TEXT_SEPARATOR))),
        stop_sequences: stop_sequences(extra.get("stop"))?,
        stream: req.stream,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: top_k(extra.get("top_k"))?,
        tools,
        tool_choice,
        metadata: extra
            .get("user")
            .and_then(Value::as_str)
            .map(|user| json!({ "user_id": user })),
        extra: passthrough,
    })
}

/// Appends a message, merging it into the previous one when the role is the same.
fn push_merged(messages: &mut Vec<Message>, role: &str, content: anthropic::MessageContent) {
    if let Some(last) = messages.last_mut()
        && last.role == role
    {
        let previous = std::mem::replace(
            &mut last.content,
            anthropic::MessageContent::Blocks(Vec::new()),
        );
        let mut blocks = previous.into_blocks();
        blocks.extend(content.into_blocks());
        last.content = anthropic::MessageContent::Blocks(blocks);
    } else {
        messages.push(Message {
            role: role.to_owned(),
            content,
        });
    }
}

fn user_content(msg: &ChatMessage, i: usize) -> Result<anthropic::MessageContent, TranslateError> {
    match &msg.content {
        Some(openai::MessageContent::Text(text)) => {
            Ok(anthropic::MessageContent::Text(text.clone()))
        }
        Some(openai::MessageContent::Parts(parts)) => Ok(anthropic::MessageContent::Blocks(
            parts_to_blocks(parts, i)?,
        )),
        None => Err(TranslateError::at(
            format!("messages[{i}].content"),
            "a user message needs content",
        )),
    }
}

fn parts_to_blocks(parts: &[Value], i: usize) -> Result<Vec<ContentBlock>, TranslateError> {
    parts
        .iter()
        .enumerate()
        .map(|(j, part)| part_to_block(part, &format!("messages[{i}].content[{j}]")))
        .collect()
}

fn part_to_block(part: &Value, param: &str) -> Result<ContentBlock, TranslateError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => match part.get("text").and_then(Value::as_str) {
            Some(text) => Ok(ContentBlock::text(text)),
            None => Err(TranslateError::at(
                format!("{param}.text"),
                "must be a string",
            )),
        },
        Some("image_url") => {
            // `image_url` is `{url, detail}`; some clients send the URL as a bare string.
            let image_url = part.get("image_url");
            let url = image_url
                .and_then(|v| v.get("url"))
                .or(image_url)
                .and_then(Value::as_str);
            let Some(url) = url else {
                return Err(TranslateError::at(
                    format!("{param}.image_url.url"),
                    "must be a string",
                ));
            };
            let source = image_source(url).ok_or_else(|| {
                TranslateError::at(
                    format!("{param}.image_url.url"),
                    "must be a base64 data URL or an http(s) URL",
                )
            })?;
            Ok(ContentBlock::Image {
                source,
                extra: Map::new(),
            })
        }
        Some(other) => Err(TranslateError::at(
            format!("{param}.type"),
            &format!("content part type `{other}` cannot be sent to an Anthropic model"),
        )),
        None => Err(TranslateError::at(
            format!("{param}.type"),
            "must be a string",
        )),
    }
}

/// The Anthropic image `source` of a data or http(s) URL.
fn image_source(url: &str) -> Option<Value> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = rest.split_once(";base64,")?;
        return Some(json!({ "type": "base64", "media_type": media_type, "data": data }));
    }
    (url.starts_with("https://") || url.starts_with("http://"))
        .then(|| json!({ "type": "url", "url": url }))
}

fn assistant_blocks(msg: &ChatMessage, i: usize) -> Result<Vec<ContentBlock>, TranslateError> {
    let mut blocks = Vec::new();
    let text = msg.text_content();
    if !text.is_empty() {
        blocks.push(ContentBlock::text(text));
    }
    for (j, call) in msg.tool_calls.iter().flatten().enumerate() {
        let param = format!("messages[{i}].tool_calls[{j}].function.arguments");
        let input = parse_arguments(&call.function.arguments)
            .map_err(|problem| TranslateError::at(param, &problem))?;
        blocks.push(ContentBlock::tool_use(&call.id, &call.function.name, input));
    }
    Ok(blocks)
}

/// Tool call arguments as the JSON object Anthropic wants; an empty string means no arguments.
fn parse_arguments(arguments: &str) -> Result<Value, String> {
    if arguments.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str(arguments) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("must be a JSON object".to_owned()),
        Err(e) => Err(format!("must be valid JSON ({e})")),
    }
}

fn tool_result_content(
    msg: &ChatMessage,
    i: usize,
) -> Result<anthropic::MessageContent, TranslateError> {
    let Some(tool_use_id) = msg.tool_call_id.clone() else {
        return Err(TranslateError::at(
            format!("messages[{i}].tool_call_id"),
            "a tool message needs a tool_call_id",
        ));
    };
    let content = match &msg.content {
        Some(openai::MessageContent::Text(text)) => Some(ToolResultContent::Text(text.clone())),
        Some(openai::MessageContent::Parts(parts)) => {
            Some(ToolResultContent::Blocks(parts_to_blocks(parts, i)?))
        }
        None => None,
    };
    Ok(anthropic::MessageContent::Blocks(vec![
        ContentBlock::ToolResult {
            tool_use_id,
            content,
            is_error: None,
            extra: Map::new(),
        },
    ]))
}

fn stop_sequences(stop: Option<&Value>) -> Result<Option<Vec<String>>, TranslateError> {
    match stop {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| TranslateError::at(format!("stop[{i}]"), "must be a string"))
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(TranslateError::at(
            "stop",
            "must be a string or an array of strings",
        )),
    }
}

fn top_k(top_k: Option<&Value>) -> Result<Option<u32>, TranslateError> {
    match top_k {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .and_then(|k| u32::try_from(k).ok())
            .map(Some)
            .ok_or_else(|| TranslateError::at("top_k", "must be a non-negative integer")),
    }
}

fn openai_tools_to_anthropic(tools: Option<&Value>) -> Result<Option<Vec<Tool>>, TranslateError> {
    let items = match tools {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(TranslateError::at("tools", "must be an array")),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, tool) in items.iter().enumerate() {
        let kind = tool
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("function");
        if kind != "function" {
            return Err(TranslateError::at(
                format!("tools[{i}].type"),
                &format!("tool type `{kind}` cannot be sent to an Anthropic model"),
            ));
        }
        let function = tool.get("function").and_then(Value::as_object);
        let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) else {
            return Err(TranslateError::at(
                format!("tools[{i}].function.name"),
                "must be a string",
            ));
        };
        out.push(Tool {
            name: name.to_owned(),
            description: function
                .and_then(|f| f.get("description"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            input_schema: function
                .and_then(|f| f.get("parameters"))
                .cloned()
                .unwrap_or_else(|| json!({ "type": "object", "properties": {} })),
            extra: Map::new(),
        });
    }
    Ok(Some(out))
}

fn openai_tool_choice_to_anthropic(
    extra: &openai::Extra,
    has_tools: bool,
) -> Result<Option<ToolChoice>, TranslateError> {
    let disable_parallel_tool_use =
        (extra.get("parallel_tool_calls") == Some(&Value::Bool(false))).then_some(true);
    let choice = match extra.get("tool_choice") {
        // Anthropic rejects a tool_choice without tools, so the parallel flag needs tools to ride on.
        None | Some(Value::Null) => {
            return Ok(
                (has_tools && disable_parallel_tool_use.is_some()).then_some(ToolChoice::Auto {
                    disable_parallel_tool_use,
                }),
            );
        }
        Some(Value::String(s)) if s == "auto" => ToolChoice::Auto {
            disable_parallel_tool_use,
        },
        Some(Value::String(s)) if s == "required" => ToolChoice::Any {
            disable_parallel_tool_use,
        },
        Some(Value::String(s)) if s == "none" => ToolChoice::None,
        Some(choice) => {
            let name = (choice.get("type").and_then(Value::as_str) == Some("function"))
                .then(|| choice.get("function")?.get("name")?.as_str())
                .flatten();
            let Some(name) = name else {
                return Err(TranslateError::at(
                    "tool_choice",
                    "must be `auto`, `none`, `required` or a function object",
                ));
            };
            ToolChoice::Tool {
                name: name.to_owned(),
                disable_parallel_tool_use,
            }
        }
    };
    Ok(Some(choice))
}

/// Translates a non-streaming Anthropic response into an OpenAI chat completion.
///
/// Text blocks are concatenated into `content`, `tool_use` blocks become `tool_calls`, thinking becomes
/// `reasoning_content`; other blocks (redacted thinking, server tool blocks) have no OpenAI rendering.
#[must_use]
pub fn messages_response_to_chat(resp: MessagesResponse) -> ChatCompletion {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in resp.content {
        match block {
            ContentBlock::Text { text: piece, .. } => text.push_str(&piece),
            ContentBlock::Thinking { thinking, .. } => reasoning.push_str(&thinking),
            ContentBlock::ToolUse {
                id, name, input, ..
            } => tool_calls.push(tool_call(id, name, &input)),
            _ => {}
        }
    }
    let mut message = assistant_chat_message(text, tool_calls);
    if !reasoning.is_empty() {
        message
            .extra
            .insert("reasoning_content".to_owned(), Value::String(reasoning));
    }
    ChatCompletion {
        id: resp.id,
        object: "chat.completion".to_owned(),
        created: unix_now(),
        model: resp.model,
        choices: vec![Choice {
            index: 0,
            message,
            finish_reason: resp
                .stop_reason
                .as_deref()
                .map(|r| finish_reason(r).to_owned()),
            extra: Map::new(),
        }],
        usage: Some(chat_usage(resp.usage)),
        extra: Map::new(),
    }
}

/// An OpenAI tool call of a `tool_use` block; the arguments are the input as compact JSON.
fn tool_call(id: String, name: String, input: &Value) -> ToolCall {
    ToolCall {
        id,
        kind: "function".to_owned(),
        function: FunctionCall {
            name,
            arguments: input.to_string(),
        },
        extra: Map::new(),
    }
}

/// An OpenAI assistant message; like OpenAI, `content` is null when the message only calls tools.
fn assistant_chat_message(text: String, tool_calls: Vec<ToolCall>) -> ChatMessage {
    ChatMessage {
        role: "assistant".to_owned(),
        content: (!text.is_empty() || tool_calls.is_empty())
            .then_some(openai::MessageContent::Text(text)),
        tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
        ..ChatMessage::default()
    }
}

/// OpenAI `finish_reason` of an Anthropic `stop_reason`.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => finish::LENGTH,
        "tool_use" => finish::TOOL_CALLS,
        "refusal" => finish::CONTENT_FILTER,
        // end_turn, stop_sequence, pause_turn and anything newer.
        _ => finish::STOP,
    }
}

/// OpenAI usage of Anthropic usage: cache reads and writes count as prompt tokens.
fn chat_usage(usage: anthropic::Usage) -> openai::Usage {
    let cache_read = usage.cache_read_input_tokens.unwrap_or(0);
    let prompt = usage.input_tokens + cache_read + usage.cache_creation_input_tokens.unwrap_or(0);
    let mut out = openai::Usage::new(prompt, usage.output_tokens);
    out.prompt_tokens_details = usage
        .cache_read_input_tokens
        .map(|cached_tokens| PromptTokensDetails { cached_tokens });
    out
}

/// Turns the events of an Anthropic stream into OpenAI chunks, one event at a time.
#[derive(Debug)]
pub struct MessagesToChatStream {
    id: String,
    model: String,
    created: u64,
    /// Usage so far; `None` until `message_start`.
    usage: Option<anthropic::Usage>,
    /// Number of `tool_use` blocks seen: the OpenAI index of the next tool call.
    tool_calls: u32,
    /// Block index and tool call index of the open `tool_use` block, the target of `input_json_delta`s.
    open_tool: Option<(u32, u32)>,
}

impl Default for MessagesToChatStream {
    fn default() -> Self {
        Self::new()
    }
}

impl MessagesToChatStream {
    /// A translator for one stream.
    #[must_use]
    pub fn new() -> Self {
        Self {
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            usage: None,
            tool_calls: 0,
            open_tool: None,
        }
    }

    /// The chunks one event becomes (often none); an `error` event comes back as `Err`.
    ///
    /// `message_stop` always yields a final `choices: []` chunk with usage; drop it if the client did not
    /// ask for `stream_options.include_usage`.
    ///
    /// # Errors
    ///
    /// The detail of an upstream `error` event, to be relayed to the client as a stream error.
    pub fn on_event(&mut self, ev: StreamEvent) -> Result<Vec<ChatChunk>, ErrorDetail> {
        let chunk = match ev {
            StreamEvent::MessageStart { message } => {
                self.id = message.id;
                self.model = message.model;
                self.usage = Some(message.usage);
                self.chunk(
                    Delta {
                        role: Some("assistant".to_owned()),
                        content: Some(String::new()),
                        ..Delta::default()
                    },
                    None,
                )
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                ContentBlock::ToolUse { id, name, .. } => {
                    let call = self.tool_calls;
                    self.tool_calls += 1;
                    self.open_tool = Some((index, call));
                    self.tool_call_chunk(ToolCallDelta {
                        index: call,
                        id: Some(id),
                        kind: Some("function".to_owned()),
                        function: Some(FunctionCallDelta {
                            name: Some(name),
                            arguments: Some(String::new()),
                        }),
                    })
                }
                ContentBlock::Text { text, .. } if !text.is_empty() => self.text_chunk(text),
                _ => return Ok(Vec::new()),
            },
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => self.text_chunk(text),
                BlockDelta::InputJsonDelta { partial_json } => match self.open_tool {
                    // Server tool blocks stream input JSON too; only client tool calls become OpenAI ones.
                    Some((block, call)) if block == index => self.tool_call_chunk(ToolCallDelta {
                        index: call,
                        function: Some(FunctionCallDelta {
                            name: None,
                            arguments: Some(partial_json),
                        }),
                        ..ToolCallDelta::default()
                    }),
                    _ => return Ok(Vec::new()),
                },
                BlockDelta::ThinkingDelta { thinking } => {
                    let mut delta = Delta::default();
                    delta
                        .extra
                        .insert("reasoning_content".to_owned(), Value::String(thinking));
                    self.chunk(delta, None)
                }
                _ => return Ok(Vec::new()),
            },
            StreamEvent::ContentBlockStop { index } => {
                if self.open_tool.is_some_and(|(block, _)| block == index) {
                    self.open_tool = None;
                }
                return Ok(Vec::new());
            }
            StreamEvent::MessageDelta { delta, usage } => {
                self.add_usage(usage);
                match delta.stop_reason {
                    Some(reason) => self.chunk(Delta::default(), Some(finish_reason(&reason))),
                    None => return Ok(Vec::new()),
                }
            }
            StreamEvent::MessageStop => ChatChunk {
                usage: Some(self.usage().unwrap_or_default()),
                ..self.empty_chunk()
            },
            StreamEvent::Error { error } => return Err(error),
            StreamEvent::Ping => return Ok(Vec::new()),
        };
        Ok(vec![chunk])
    }

    /// Usage so far in OpenAI terms; `None` before `message_start`.
    #[must_use]
    pub fn usage(&self) -> Option<openai::Usage> {
        self.usage.map(chat_usage)
    }

    /// Folds the cumulative usage of `message_delta` in; it may omit the input counts.
    fn add_usage(&mut self, usage: anthropic::Usage) {
        let total = self.usage.get_or_insert_default();
        total.output_tokens = usage.output_tokens;
        if usage.input_tokens > 0 {
            total.input_tokens = usage.input_tokens;
        }
        total.cache_creation_input_tokens = usage
            .cache_creation_input_tokens
            .or(total.cache_creation_input_tokens);
        total.cache_read_input_tokens = usage
            .cache_read_input_tokens
            .or(total.cache_read_input_tokens);
    }

    fn text_chunk(&self, text: String) -> ChatChunk {
        self.chunk(
            Delta {
                content: Some(text),
                ..Delta::default()
            },
            None,
        )
    }

    fn tool_call_chunk(&self, call: ToolCallDelta) -> ChatChunk {
        self.chunk(
            Delta {
                tool_calls: Some(vec![call]),
                ..Delta::default()
            },
            None,
        )
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<&str>) -> ChatChunk {
        ChatChunk {
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(str::to_owned),
                extra: Map::new(),
            }],
            ..self.empty_chunk()
        }
    }

    /// A chunk with this stream's id, model and time, and no choices.
    fn empty_chunk(&self) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: Vec::new(),
            usage: None,
            extra: Map::new(),
        }
    }
}

// === Anthropic client → any provider ===

/// Translates an Anthropic Messages request into an OpenAI chat request for any provider.
///
/// The system prompt becomes the first message; `tool_result` blocks become `tool` messages placed before
/// the rest of their user turn; thinking blocks are dropped. Several text blocks of the system prompt, a
/// user turn or a tool result are joined with a blank line.
///
/// # Errors
///
/// A block, tool or role other providers cannot take: a `document` or server tool block, a server tool
/// definition, an image source other than base64 or URL, a role other than `user` or `assistant`.
pub fn messages_to_chat_request(req: MessagesRequest) -> Result<ChatRequest, TranslateError> {
    let stream = req.is_stream();
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = req.system {
        let text = system_text(system)?;
        if !text.is_empty() {
            messages.push(ChatMessage::text("system", text));
        }
    }
    for (i, msg) in req.messages.into_iter().enumerate() {
        match msg.role.as_str() {
            "user" => push_user_turn(&mut messages, msg.content, i)?,
            "assistant" => messages.push(assistant_message(msg.content, i)?),
            other => {
                return Err(TranslateError::at(
                    format!("messages[{i}].role"),
                    &format!("role `{other}` is not `user` or `assistant`"),
                ));
            }
        }
    }

    let mut extra = Map::new();
    if let Some(stop) = req.stop_sequences.filter(|s| !s.is_empty()) {
        extra.insert("stop".to_owned(), json!(stop));
    }
    if let Some(tools) = req.tools {
        let tools = tools
            .into_iter()
            .enumerate()
            .map(|(i, tool)| anthropic_tool_to_openai(tool, i));
        extra.insert(
            "tools".to_owned(),
            Value::Array(tools.collect::<Result<_, _>>()?),
        );
    }
    if let Some(choice) = req.tool_choice {
        let (choice, disable_parallel_tool_use) = match choice {
            ToolChoice::Auto {
                disable_parallel_tool_use,
            } => (json!("auto"), disable_parallel_tool_use),
            ToolChoice::Any {
                disable_parallel_tool_use,
            } => (json!("required"), disable_parallel_tool_use),
            ToolChoice::Tool {
                name,
                disable_parallel_tool_use,
            } => (
                json!({ "type": "function", "function": { "name": name } }),
                disable_parallel_tool_use,
            ),
            ToolChoice::None => (json!("none"), None),
        };
        extra.insert("tool_choice".to_owned(), choice);
        if disable_parallel_tool_use == Some(true) {
            extra.insert("parallel_tool_calls".to_owned(), Value::Bool(false));
        }
    }
    if let Some(user) = req
        .metadata
        .as_ref()
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        extra.insert("user".to_owned(), Value::String(user.to_owned()));
    }
    Ok(ChatRequest {
        model: req.model,
        messages,
        stream: req.stream,
        // An Anthropic stream always ends with usage, so ask the provider for it.
        stream_options: stream.then(|| StreamOptions {
            include_usage: Some(true),
            extra: Map::new(),
        }),
        max_tokens: Some(req.max_tokens),
        max_completion_tokens: None,
        temperature: req.temperature,
        top_p: req.top_p,
        extra,
    })
}

fn system_text(system: SystemPrompt) -> Result<String, TranslateError> {
    match system {
        SystemPrompt::Text(text) => Ok(text),
        SystemPrompt::Blocks(blocks) => {
            let texts = blocks
                .into_iter()
                .enumerate()
                .map(|(j, block)| match block {
                    ContentBlock::Text { text, .. } => Ok(text),
                    other => Err(unsupported_block(&other, format!("system[{j}]"))),
                });
            Ok(texts.collect::<Result<Vec<_>, _>>()?.join(TEXT_SEPARATOR))
        }
    }
}

fn unsupported_block(block: &ContentBlock, param: String) -> TranslateError {
    TranslateError::at(
        param,
        &format!(
            "content block type `{}` cannot be sent to this model",
            block.kind()
        ),
    )
}

/// Pushes the OpenAI messages of one Anthropic user turn: its tool results first, then its other content.
fn push_user_turn(
    out: &mut Vec<ChatMessage>,
    content: anthropic::MessageContent,
    i: usize,
) -> Result<(), TranslateError> {
    let blocks = match content {
        anthropic::MessageContent::Text(text) => {
            out.push(ChatMessage::text("user", text));
            return Ok(());
        }
        anthropic::MessageContent::Blocks(blocks) => blocks,
    };
    let mut parts = Vec::new();
    for (j, block) in blocks.into_iter().enumerate() {
        match block {
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
                ..
            } => {
                out.push(tool_message(tool_use_id, content, is_error == Some(true)));
            }
            ContentBlock::Text { text, .. } => parts.push(json!({ "type": "text", "text": text })),
            ContentBlock::Image { source, .. } => {
                let url = image_url(&source, &format!("messages[{i}].content[{j}].source"))?;
                parts.push(json!({ "type": "image_url", "image_url": { "url": url } }));
            }
            other => {
                return Err(unsupported_block(
                    &other,
                    format!("messages[{i}].content[{j}]"),
                ));
            }
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let content = if parts.iter().all(|p| p["type"] == "text") {
        let texts: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        openai::MessageContent::Text(texts.join(TEXT_SEPARATOR))
    } else {
        openai::MessageContent::Parts(parts)
    };
    out.push(ChatMessage {
        role: "user".to_owned(),
        content: Some(content),
        ..ChatMessage::default()
    });
    Ok(())
}

/// A `tool` message of a `tool_result` block; OpenAI tool results are text, so images are dropped.
fn tool_message(
    tool_use_id: String,
    content: Option<ToolResultContent>,
    is_error: bool,
) -> ChatMessage {
    let mut text = match content {
        None => String::new(),
        Some(ToolResultContent::Text(text)) => text,
        Some(ToolResultContent::Blocks(blocks)) => {
            let texts: Vec<String> = blocks
                .into_iter()
                .filter_map(|block| match block {
                    ContentBlock::Text { text, .. } => Some(text),
                    _ => None,
                })
                .collect();
            texts.join(TEXT_SEPARATOR)
        }
    };
    if is_error {
        text.insert_str(0, "Error: ");
    }
    ChatMessage {
        role: "tool".to_owned(),
        content: Some(openai::MessageContent::Text(text)),
        tool_call_id: Some(tool_use_id),
        ..ChatMessage::default()
    }
}

/// The OpenAI `image_url.url` of an Anthropic image source: a data URL or the URL itself.
fn image_url(source: &Value, param: &str) -> Result<String, TranslateError> {
    let field = |name: &str| source.get(name).and_then(Value::as_str);
    match field("type") {
        Some("base64") => match (field("media_type"), field("data")) {
            (Some(media_type), Some(data)) => Ok(format!("data:{media_type};base64,{data}")),
            _ => Err(TranslateError::at(
                param,
                "a base64 source needs `media_type` and `data`",
            )),
        },
        Some("url") => field("url")
            .map(str::to_owned)
            .ok_or_else(|| TranslateError::at(format!("{param}.url"), "must be a string")),
        _ => Err(TranslateError::at(
            format!("{param}.type"),
            "only `base64` and `url` image sources can be sent to this model",
        )),
    }
}

fn assistant_message(
    content: anthropic::MessageContent,
    i: usize,
) -> Result<ChatMessage, TranslateError> {
    let blocks = match content {
        anthropic::MessageContent::Text(text) => return Ok(ChatMessage::text("assistant", text)),
        anthropic::MessageContent::Blocks(blocks) => blocks,
    };
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for (j, block) in blocks.into_iter().enumerate() {
        match block {
            ContentBlock::Text { text: piece, .. } => text.push_str(&piece),
            ContentBlock::ToolUse {
                id, name, input, ..
            } => tool_calls.push(tool_call(id, name, &input)),
            // Thinking is signed for Anthropic only; other providers neither need nor accept it.
            ContentBlock::Thinking { .. } | ContentBlock::RedactedThinking { .. } => {}
            other => {
                return Err(unsupported_block(
                    &other,
                    format!("messages[{i}].content[{j}]"),
                ));
            }
        }
    }
    Ok(assistant_chat_message(text, tool_calls))
}

fn anthropic_tool_to_openai(tool: Tool, i: usize) -> Result<Value, TranslateError> {
    // Client tools have no type (or `custom`); server tools (`web_search_…`, `bash_…`) run at Anthropic.
    if let Some(kind) = tool.extra.get("type").and_then(Value::as_str)
        && kind != "custom"
    {
        return Err(TranslateError::at(
            format!("tools[{i}].type"),
            &format!("Anthropic server tool `{kind}` cannot be used with this model"),
        ));
    }
    let mut function = Map::new();
    function.insert("name".to_owned(), Value::String(tool.name));
    if let Some(description) = tool.description {
        function.insert("description".to_owned(), Value::String(description));
    }
    let parameters = if tool.input_schema.is_null() {
        json!({ "type": "object", "properties": {} })
    } else {
        tool.input_schema
    };
    function.insert("parameters".to_owned(), parameters);
    Ok(json!({ "type": "function", "function": function }))
}

/// Translates an OpenAI chat completion into an Anthropic response (first choice only).
#[must_use]
pub fn chat_to_messages_response(resp: ChatCompletion) -> MessagesResponse {
    let mut out = MessagesResponse::new(message_id(&resp.id), resp.model);
    let mut finish = None;
    if let Some(choice) = resp.choices.into_iter().next() {
        let text = match choice.message.content {
            Some(openai::MessageContent::Text(text)) => text,
            Some(parts) => parts.joined_text(),
            None => String::new(),
        };
        if !text.is_empty() {
            out.content.push(ContentBlock::text(text));
        }
        for call in choice.message.tool_calls.into_iter().flatten() {
            let input = parse_arguments(&call.function.arguments)
                .unwrap_or_else(|_| Value::Object(Map::new()));
            out.content
                .push(ContentBlock::tool_use(call.id, call.function.name, input));
        }
        finish = choice.finish_reason;
    }
    if out.content.is_empty() {
        out.content.push(ContentBlock::text(""));
    }
    out.stop_reason = Some(stop_reason(finish.as_deref()).to_owned());
    out.usage = anthropic_usage(resp.usage.unwrap_or_default());
    out
}

/// An Anthropic message id: OpenAI ids get the `msg_` prefix clients expect.
fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else {
        format!("msg_{id}")
    }
}

/// Anthropic `stop_reason` of an OpenAI `finish_reason`.
fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some(finish::LENGTH) => "max_tokens",
        Some(finish::TOOL_CALLS | "function_call") => "tool_use",
        Some(finish::CONTENT_FILTER) => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic usage of OpenAI usage: cached prompt tokens are reported as cache reads, not input.
fn anthropic_usage(usage: openai::Usage) -> anthropic::Usage {
    let cached = usage.prompt_tokens_details.map(|d| d.cached_tokens);
    anthropic::Usage {
        input_tokens: usage.prompt_tokens.saturating_sub(cached.unwrap_or(0)),
        output_tokens: usage.completion_tokens,
        cache_creation_input_tokens: None,
        cache_read_input_tokens: cached,
    }
}

/// Turns the chunks of an OpenAI stream into Anthropic events: [`Self::on_chunk`] per chunk, then
/// [`Self::finish`].
#[derive(Debug)]
pub struct ChatToMessagesStream {
    fallback_model: String,
    started: bool,
    finished: bool,
    /// Index of the next content block.
    next_block: u32,
    /// The open content block: its index and kind.
    open: Option<(u32, OpenBlock)>,
    stop_reason: Option<&'static str>,
    usage: Option<openai::Usage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text,
    /// A `tool_use` block, with the OpenAI index of the tool call it renders.
    Tool(u32),
}

impl ChatToMessagesStream {
    /// A translator for one stream; `fallback_model` names the model when the chunks do not.
    #[must_use]
    pub fn new(fallback_model: &str) -> Self {
        Self {
            fallback_model: fallback_model.to_owned(),
            started: false,
            finished: false,
            next_block: 0,
            open: None,
            stop_reason: None,
            usage: None,
        }
    }

    /// The events one chunk becomes; the first chunk also yields `message_start`.
    ///
    /// A tool call fragment that belongs to a call other than the open one (interleaved parallel calls) has
    /// no place in Anthropic's one-block-at-a-time stream and is dropped.
    pub fn on_chunk(&mut self, chunk: &ChatChunk) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        if self.finished {
            return events;
        }
        if !self.started {
            self.start(&chunk.id, &chunk.model, &mut events);
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        let Some(choice) = chunk.choices.iter().find(|c| c.index == 0) else {
            return events;
        };
        if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
            let index = self.text_block(&mut events);
            events.push(StreamEvent::ContentBlockDelta {
                index,
                delta: BlockDelta::TextDelta {
                    text: text.to_owned(),
                },
            });
        }
        for call in choice.delta.tool_calls.iter().flatten() {
            let function = call.function.as_ref();
            if let Some(id) = &call.id {
                self.close_block(&mut events);
                let index = self.open_block(OpenBlock::Tool(call.index));
                let name = function.and_then(|f| f.name.as_deref()).unwrap_or_default();
                events.push(StreamEvent::ContentBlockStart {
                    index,
                    content_block: ContentBlock::tool_use(
                        id.as_str(),
                        name,
                        Value::Object(Map::new()),
                    ),
                });
            }
            if let Some(arguments) = function
                .and_then(|f| f.arguments.as_deref())
                .filter(|a| !a.is_empty())
                && let Some((index, OpenBlock::Tool(open_call))) = self.open
                && open_call == call.index
            {
                events.push(StreamEvent::ContentBlockDelta {
                    index,
                    delta: BlockDelta::InputJsonDelta {
                        partial_json: arguments.to_owned(),
                    },
                });
            }
        }
        if let Some(reason) = choice.finish_reason.as_deref() {
            self.stop_reason = Some(stop_reason(Some(reason)));
        }
        events
    }

    /// The closing events: the open block's `content_block_stop`, `message_delta` with the stop reason and
    /// usage, and `message_stop`. Well-formed even when no chunk arrived; empty when called again.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        if self.finished {
            return events;
        }
        self.finished = true;
        if !self.started {
            self.start("", "", &mut events);
        }
        self.close_block(&mut events);
        events.push(StreamEvent::MessageDelta {
            delta: MessageDeltaBody {
                stop_reason: Some(self.stop_reason.unwrap_or("end_turn").to_owned()),
                stop_sequence: None,
            },
            usage: self.usage.map(anthropic_usage).unwrap_or_default(),
        });
        events.push(StreamEvent::MessageStop);
        events
    }

    fn start(&mut self, id: &str, model: &str, events: &mut Vec<StreamEvent>) {
        self.started = true;
        let model = if model.is_empty() {
            self.fallback_model.as_str()
        } else {
            model
        };
        events.push(StreamEvent::MessageStart {
            message: MessagesResponse::new(message_id(id), model),
        });
    }

    /// The index of the open text block, opening one (and closing a tool block) if needed.
    fn text_block(&mut self, events: &mut Vec<StreamEvent>) -> u32 {
        if let Some((index, OpenBlock::Text)) = self.open {
            return index;
        }
        self.close_block(events);
        let index = self.open_block(OpenBlock::Text);
        events.push(StreamEvent::ContentBlockStart {
            index,
            content_block: ContentBlock::text(""),
        });
        index
    }

    fn open_block(&mut self, kind: OpenBlock) -> u32 {
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((index, kind));
        index
    }

    fn close_block(&mut self, events: &mut Vec<StreamEvent>) {
        if let Some((index, _)) = self.open.take() {
            events.push(StreamEvent::ContentBlockStop { index });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    fn to_json(value: &impl Serialize) -> Value {
        serde_json::to_value(value).unwrap()
    }

    fn chat_request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    fn messages_request(body: Value) -> MessagesRequest {
        serde_json::from_value(body).unwrap()
    }

    fn to_anthropic(body: Value) -> Result<MessagesRequest, TranslateError> {
        chat_to_messages_request(&chat_request(body), "claude-x", 4096)
    }

    fn assert_error(result: Result<impl std::fmt::Debug, TranslateError>, param: &str) {
        let err = result.unwrap_err();
        assert_eq!(err.param.as_deref(), Some(param), "{err:?}");
        assert!(err.message.starts_with(param), "{err:?}");
    }

    // --- 1. OpenAI request -> Anthropic request ---

    #[test]
    fn openai_request_becomes_anthropic_request() {
        let req = to_anthropic(json!({
            "model": "public-name",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is in this image?"},
                {"role": "user", "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
                ]},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "lookup", "arguments": "{\"q\": \"cat\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
                {"role": "developer", "content": [
                    {"type": "text", "text": "Answer in "}, {"type": "text", "text": "English."}
                ]},
                {"role": "user", "content": "Thanks"}
            ],
            "max_completion_tokens": 500, "max_tokens": 100,
            "stop": "END", "temperature": 0.3, "top_p": 0.8, "top_k": 40,
            "tools": [
                {"type": "function", "function": {"name": "lookup", "description": "Search",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                    "strict": true}},
                {"type": "function", "function": {"name": "now"}}
            ],
            "tool_choice": "required", "parallel_tool_calls": false,
            "user": "alice", "stream": true, "stream_options": {"include_usage": true},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "n": 1, "seed": 7, "response_format": {"type": "text"}, "logprobs": false
        }))
        .unwrap();
        assert_eq!(
            to_json(&req),
            json!({
                "model": "claude-x",
                "max_tokens": 500,
                "system": "You are terse.\n\nAnswer in English.",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is in this image?"},
                        {"type": "text", "text": "Look:"},
                        {"type": "image", "source":
                            {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "cat"}},
                        {"type": "tool_use", "id": "call_2", "name": "now", "input": {}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "a cat"},
                        {"type": "tool_result", "tool_use_id": "call_2",
                         "content": [{"type": "text", "text": "noon"}]},
                        {"type": "text", "text": "Thanks"}
                    ]}
                ],
                "stop_sequences": ["END"], "stream": true, "temperature": 0.3, "top_p": 0.8, "top_k": 40,
                "tools": [
                    {"name": "lookup", "description": "Search",
                     "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}},
                    {"name": "now", "input_schema": {"type": "object", "properties": {}}}
                ],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "metadata": {"user_id": "alice"},
                "thinking": {"type": "enabled", "budget_tokens": 1024}
            })
        );
    }

    #[test]
    fn plain_request_stays_minimal() {
        let req =
            to_anthropic(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                .unwrap();
        assert_eq!(
            to_json(&req),
            json!({"model": "claude-x", "max_tokens": 4096, "messages": [{"role": "user", "content": "hi"}]})
        );

        let req = to_anthropic(json!({"model": "m", "max_tokens": 7, "stop": ["a", "b"],
            "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap();
        assert_eq!(req.max_tokens, 7);
        assert_eq!(
            req.stop_sequences,
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
    }

    #[test]
    fn consecutive_roles_merge_and_empty_assistant_turns_vanish() {
        let req = to_anthropic(json!({"model": "m", "messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "three"},
            {"role": "assistant", "content": "a"},
            {"role": "assistant", "content": [{"type": "text", "text": "b"}]}
        ]}))
        .unwrap();
        assert_eq!(
            to_json(&req.messages),
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "one"}, {"type": "text", "text": "two"},
                    {"type": "text", "text": "three"}
                ]},
                {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ])
        );
    }

    #[test]
    fn tool_choice_and_parallel_flag_map() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        let cases = [
            (json!("auto"), None, json!({"type": "auto"})),
            (json!("none"), None, json!({"type": "none"})),
            (json!("required"), None, json!({"type": "any"})),
            (
                json!({"type": "function", "function": {"name": "f"}}),
                None,
                json!({"type": "tool", "name": "f"}),
            ),
            (
                json!({"type": "function", "function": {"name": "f"}}),
                Some(false),
                json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true}),
            ),
            (
                Value::Null,
                Some(false),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            ),
            (json!("auto"), Some(true), json!({"type": "auto"})),
        ];
        for (choice, parallel, expected) in cases {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools});
            if !choice.is_null() {
                body["tool_choice"] = choice.clone();
            }
            if let Some(parallel) = parallel {
                body["parallel_tool_calls"] = json!(parallel);
            }
            let req = to_anthropic(body).unwrap();
            assert_eq!(to_json(&req.tool_choice), expected, "{choice} {parallel:?}");
        }

        // Without tools there is nothing for the parallel flag to ride on.
        let req = to_anthropic(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "parallel_tool_calls": false}),
        )
        .unwrap();
        assert_eq!(req.tool_choice, None);
    }

    #[test]
    fn untranslatable_openai_requests_name_the_param() {
        let user = json!({"role": "user", "content": "hi"});
        let call = |arguments: &str| {
            json!({"role": "assistant", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ]})
        };
        let tool = json!({"role": "tool", "tool_call_id": "c", "content": "ok"});
        assert_error(
            to_anthropic(json!({"model": "m", "messages": [user, tool, call("{\"a\":")]})),
            "messages[2].tool_calls[0].function.arguments",
        );
        assert_error(
            to_anthropic(json!({"model": "m", "messages": [user, call("[1, 2]")]})),
            "messages[1].tool_calls[0].function.arguments",
        );
        assert_error(
            to_anthropic(json!({"model": "m", "messages": [{"role": "function", "content": "x"}]})),
            "messages[0].role",
        );
        assert_error(
            to_anthropic(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "listen"},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
                ]}]}),
            ),
            "messages[0].content[1].type",
        );
        assert_error(
            to_anthropic(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}
                ]}]}),
            ),
            "messages[0].content[0].image_url.url",
        );
        assert_error(
            to_anthropic(
                json!({"model": "m", "messages": [user, {"role": "tool", "content": "x"}]}),
            ),
            "messages[1].tool_call_id",
        );
        assert_error(
            to_anthropic(json!({"model": "m", "messages": [user], "stop": 5})),
            "stop",
        );
        assert_error(
            to_anthropic(json!({"model": "m", "messages": [user], "stop": ["a", 1]})),
            "stop[1]",
        );
        assert_error(
            to_anthropic(json!({"model": "m", "messages": [user], "top_k": -1})),
            "top_k",
        );
        assert_error(
            to_anthropic(
                json!({"model": "m", "messages": [user], "tools": [{"type": "custom", "custom": {}}]}),
            ),
            "tools[0].type",
        );
        assert_error(
            to_anthropic(
                json!({"model": "m", "messages": [user], "tools": [{"type": "function", "function": {}}]}),
            ),
            "tools[0].function.name",
        );
        assert_error(
            to_anthropic(json!({"model": "m", "messages": [user], "tool_choice": "sometimes"})),
            "tool_choice",
        );
    }

    // --- 2. Anthropic response -> OpenAI response ---

    #[test]
    fn anthropic_response_becomes_chat_completion() {
        let resp: MessagesResponse = serde_json::from_value(json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "The user wants", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Let me "},
                {"type": "text", "text": "look.", "citations": []},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "cat", "n": 2}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 20,
                      "cache_creation_input_tokens": 3, "cache_read_input_tokens": 5}
        }))
        .unwrap();
        let mut completion = messages_response_to_chat(resp);
        assert!(completion.created > 0);
        completion.created = 0;
        assert_eq!(
            to_json(&completion),
            json!({
                "id": "msg_01", "object": "chat.completion", "created": 0, "model": "claude-x",
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant", "content": "Let me look.",
                        "reasoning_content": "The user wants",
                        "tool_calls": [{"id": "toolu_1", "type": "function",
                            "function": {"name": "lookup", "arguments": "{\"n\":2,\"q\":\"cat\"}"}}]
                    },
                    "finish_reason": "tool_calls"
                }],
                "usage": {"prompt_tokens": 18, "completion_tokens": 20, "total_tokens": 38,
                          "prompt_tokens_details": {"cached_tokens": 5}}
            })
        );
    }

    #[test]
    fn tool_only_response_has_null_content_and_plain_usage() {
        let mut resp = MessagesResponse::new("msg_1", "m");
        resp.content
            .push(ContentBlock::tool_use("toolu_1", "f", json!({})));
        resp.usage = anthropic::Usage {
            input_tokens: 4,
            output_tokens: 2,
            ..anthropic::Usage::default()
        };
        let completion = messages_response_to_chat(resp);
        let message = &completion.choices[0].message;
        assert_eq!(message.content, None);
        assert_eq!(
            message.tool_calls.as_ref().unwrap()[0].function.arguments,
            "{}"
        );
        assert_eq!(completion.choices[0].finish_reason, None);
        assert_eq!(completion.usage, Some(openai::Usage::new(4, 2)));
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("something_new", "stop"),
        ] {
            assert_eq!(finish_reason(stop), finish, "{stop}");
        }
    }

    // --- 3. Anthropic stream -> OpenAI chunks ---

    fn run_messages_stream(events: Value) -> (MessagesToChatStream, Vec<Value>) {
        let mut stream = MessagesToChatStream::new();
        let mut chunks = Vec::new();
        let events: Vec<StreamEvent> = serde_json::from_value(events).unwrap();
        for event in events {
            for mut chunk in stream.on_event(event).unwrap() {
                assert_eq!(chunk.created, stream.created);
                chunk.created = 0;
                chunks.push(to_json(&chunk));
            }
        }
        (stream, chunks)
    }

    fn chunk(delta: Value, finish_reason: Option<&str>) -> Value {
        let mut chunk = json!({"id": "msg_1", "object": "chat.completion.chunk", "created": 0,
            "model": "claude-x", "choices": [{"index": 0, "finish_reason": finish_reason}]});
        chunk["choices"][0]["delta"] = delta;
        chunk
    }

    #[test]
    fn anthropic_stream_becomes_chunks() {
        let (stream, chunks) = run_messages_stream(json!([
            {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                "model": "claude-x", "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 5}}},
            {"type": "ping"},
            {"type": "content_block_start", "index": 0,
             "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm"}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hello"}},
            {"type": "content_block_stop", "index": 1},
            {"type": "content_block_start", "index": 2,
             "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}},
            {"type": "content_block_delta", "index": 2,
             "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}},
            {"type": "content_block_delta", "index": 2,
             "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}},
            {"type": "content_block_stop", "index": 2},
            {"type": "content_block_start", "index": 3,
             "content_block": {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}},
            {"type": "content_block_stop", "index": 3},
            {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
             "usage": {"output_tokens": 42}},
            {"type": "message_stop"}
        ]));
        let tool_start = |index: u32, id: &str, name: &str| {
            json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""}}]})
        };
        let tool_args = |arguments: &str| json!({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]});
        assert_eq!(
            chunks,
            vec![
                chunk(json!({"role": "assistant", "content": ""}), None),
                chunk(json!({"reasoning_content": "Hmm"}), None),
                chunk(json!({"content": "Hello"}), None),
                chunk(tool_start(0, "toolu_1", "get_weather"), None),
                chunk(tool_args("{\"city\":"), None),
                chunk(tool_args("\"Paris\"}"), None),
                chunk(tool_start(1, "toolu_2", "now"), None),
                chunk(json!({}), Some("tool_calls")),
                json!({"id": "msg_1", "object": "chat.completion.chunk", "created": 0, "model": "claude-x",
                       "choices": [],
                       "usage": {"prompt_tokens": 15, "completion_tokens": 42, "total_tokens": 57,
                                 "prompt_tokens_details": {"cached_tokens": 5}}}),
            ]
        );
        let mut expected = openai::Usage::new(15, 42);
        expected.prompt_tokens_details = Some(PromptTokensDetails { cached_tokens: 5 });
        assert_eq!(stream.usage(), Some(expected));
    }

    #[test]
    fn anthropic_stream_skips_server_tools_and_takes_late_input_usage() {
        let (stream, chunks) = run_messages_stream(json!([
            {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x",
                "usage": {"input_tokens": 0, "output_tokens": 0}}},
            {"type": "content_block_start", "index": 0, "content_block":
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}},
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "input_json_delta", "partial_json": "{\"query\": \"x\"}"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "content_block_delta", "index": 1, "delta": {"type": "brand_new_delta"}},
            {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
             "usage": {"input_tokens": 30, "output_tokens": 8, "cache_creation_input_tokens": 2}}
        ]));
        assert_eq!(
            chunks,
            vec![
                chunk(json!({"role": "assistant", "content": ""}), None),
                chunk(json!({}), Some("length"))
            ]
        );
        assert_eq!(stream.usage(), Some(openai::Usage::new(32, 8)));
    }

    #[test]
    fn anthropic_stream_error_event_is_an_err() {
        let mut stream = MessagesToChatStream::new();
        assert_eq!(stream.usage(), None);
        let event = serde_json::from_value(json!({"type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"}}))
        .unwrap();
        let err = stream.on_event(event).unwrap_err();
        assert_eq!(
            err,
            ErrorDetail {
                kind: "overloaded_error".into(),
                message: "Overloaded".into()
            }
        );
    }

    // --- 4. Anthropic request -> OpenAI request ---

    #[test]
    fn anthropic_request_becomes_openai_request() {
        let req = messages_to_chat_request(messages_request(json!({
            "model": "gpt-x", "max_tokens": 256,
            "system": [
                {"type": "text", "text": "Be helpful.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be brief."}
            ],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "need a tool", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                        {"type": "text", "text": "18C"}, {"type": "text", "text": "sunny"},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/sky.png"}}
                    ]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "timeout", "is_error": true},
                    {"type": "text", "text": "And this photo?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
                ]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_3", "name": "now", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_3"},
                    {"type": "text", "text": "a"}, {"type": "text", "text": "b"}
                ]},
                {"role": "assistant", "content": "Done."}
            ],
            "stop_sequences": ["###"], "temperature": 0.5, "top_p": 0.9, "top_k": 5,
            "tools": [
                {"name": "get_weather", "description": "Weather",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "now", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}
            ],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            "metadata": {"user_id": "u-1"}, "stream": true,
            "thinking": {"type": "enabled", "budget_tokens": 1024}
        })))
        .unwrap();
        let call = |id: &str, name: &str, arguments: &str| json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}});
        assert_eq!(
            to_json(&req),
            json!({
                "model": "gpt-x",
                "messages": [
                    {"role": "system", "content": "Be helpful.\n\nBe brief."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": "Checking.", "tool_calls": [
                        call("toolu_1", "get_weather", "{\"city\":\"Paris\"}"), call("toolu_2", "now", "{}")
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "18C\n\nsunny"},
                    {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: timeout"},
                    {"role": "user", "content": [
                        {"type": "text", "text": "And this photo?"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                    ]},
                    {"role": "assistant", "tool_calls": [call("toolu_3", "now", "{}")]},
                    {"role": "tool", "tool_call_id": "toolu_3", "content": ""},
                    {"role": "user", "content": "a\n\nb"},
                    {"role": "assistant", "content": "Done."}
                ],
                "stream": true, "stream_options": {"include_usage": true},
                "max_tokens": 256, "temperature": 0.5, "top_p": 0.9,
                "stop": ["###"],
                "tools": [
                    {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                    {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
                ],
                "tool_choice": "auto", "parallel_tool_calls": false,
                "user": "u-1"
            })
        );
    }

    #[test]
    fn anthropic_tool_choice_maps_back() {
        let cases = [
            (json!({"type": "any"}), json!("required"), None),
            (json!({"type": "none"}), json!("none"), None),
            (
                json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true}),
                json!({"type": "function", "function": {"name": "f"}}),
                Some(false),
            ),
            (
                json!({"type": "auto", "disable_parallel_tool_use": false}),
                json!("auto"),
                None,
            ),
        ];
        for (choice, expected, parallel) in cases {
            let req =
                messages_to_chat_request(messages_request(json!({"model": "m", "max_tokens": 1,
                "messages": [{"role": "user", "content": "hi"}], "tool_choice": choice})))
                .unwrap();
            assert_eq!(req.extra["tool_choice"], expected);
            assert_eq!(
                req.extra.get("parallel_tool_calls"),
                parallel.map(Value::Bool).as_ref()
            );
        }
    }

    #[test]
    fn non_streaming_anthropic_request_asks_for_no_stream_options() {
        let req = messages_to_chat_request(messages_request(json!({"model": "m", "max_tokens": 9,
            "system": "sys", "messages": [{"role": "user", "content": "hi"}], "stream": false})))
        .unwrap();
        assert_eq!(
            to_json(&req),
            json!({"model": "m", "stream": false, "max_tokens": 9, "messages": [
                {"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}
            ]})
        );
    }

    #[test]
    fn untranslatable_anthropic_requests_name_the_param() {
        let request = |messages: Value| {
            messages_to_chat_request(messages_request(
                json!({"model": "m", "max_tokens": 1, "messages": messages}),
            ))
        };
        assert_error(
            request(json!([{"role": "user", "content": [
                {"type": "text", "text": "read this"},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "x"}}
            ]}])),
            "messages[0].content[1]",
        );
        assert_error(
            request(json!([{"role": "system", "content": "x"}])),
            "messages[0].role",
        );
        assert_error(
            request(json!([{"role": "user", "content": [
                {"type": "image", "source": {"type": "file", "file_id": "file_1"}}
            ]}])),
            "messages[0].content[0].source.type",
        );
        assert_error(
            request(json!([
                {"role": "user", "content": "search"},
                {"role": "assistant", "content": [
                    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
                ]}
            ])),
            "messages[1].content[0]",
        );
        assert_error(
            messages_to_chat_request(messages_request(json!({"model": "m", "max_tokens": 1,
                "system": [{"type": "text", "text": "a"}, {"type": "image", "source": {}}],
                "messages": []}))),
            "system[1]",
        );
        assert_error(
            messages_to_chat_request(messages_request(
                json!({"model": "m", "max_tokens": 1, "messages": [],
                "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]}),
            )),
            "tools[0].type",
        );
    }

    // --- 5. OpenAI response -> Anthropic response ---

    #[test]
    fn chat_completion_becomes_anthropic_response() {
        let completion: ChatCompletion = serde_json::from_value(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Calling.",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{oops"}}
                ]
            }}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                      "prompt_tokens_details": {"cached_tokens": 30}}
        }))
        .unwrap();
        assert_eq!(
            to_json(&chat_to_messages_response(completion)),
            json!({
                "id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "gpt-x",
                "content": [
                    {"type": "text", "text": "Calling."},
                    {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                    {"type": "tool_use", "id": "call_2", "name": "g", "input": {}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 70, "output_tokens": 20, "cache_read_input_tokens": 30}
            })
        );
    }

    #[test]
    fn empty_chat_completion_still_has_a_text_block() {
        let completion = ChatCompletion {
            id: "msg_already".into(),
            model: "m".into(),
            ..ChatCompletion::default()
        };
        assert_eq!(
            to_json(&chat_to_messages_response(completion)),
            json!({
                "id": "msg_already", "type": "message", "role": "assistant", "model": "m",
                "content": [{"type": "text", "text": ""}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}
            })
        );
    }

    #[test]
    fn finish_reasons_map_to_stop_reasons() {
        for (finish, stop) in [
            (Some("stop"), "end_turn"),
            (Some("length"), "max_tokens"),
            (Some("tool_calls"), "tool_use"),
            (Some("function_call"), "tool_use"),
            (Some("content_filter"), "refusal"),
            (Some("other"), "end_turn"),
            (None, "end_turn"),
        ] {
            assert_eq!(stop_reason(finish), stop, "{finish:?}");
        }
    }

    // --- 6. OpenAI chunks -> Anthropic stream ---

    fn run_chat_stream(fallback_model: &str, chunks: Value) -> Vec<Value> {
        let mut stream = ChatToMessagesStream::new(fallback_model);
        let mut events = Vec::new();
        let chunks: Vec<ChatChunk> = serde_json::from_value(chunks).unwrap();
        for chunk in &chunks {
            events.extend(stream.on_chunk(chunk));
        }
        events.extend(stream.finish());
        assert_eq!(stream.finish(), Vec::new(), "finish is idempotent");
        events
            .iter()
            .map(|event| {
                let value = to_json(event);
                assert_eq!(event.name(), value["type"]);
                value
            })
            .collect()
    }

    fn delta_chunk(delta: Value, finish_reason: Option<&str>) -> Value {
        let mut chunk = json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-x", "choices": [{"index": 0, "finish_reason": finish_reason}]});
        chunk["choices"][0]["delta"] = delta;
        chunk
    }

    fn message_start(id: &str, model: &str) -> Value {
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}}})
    }

    fn block_start(index: u32, block: Value) -> Value {
        let mut event = json!({"type": "content_block_start", "index": index});
        event["content_block"] = block;
        event
    }

    fn block_delta(index: u32, delta: Value) -> Value {
        let mut event = json!({"type": "content_block_delta", "index": index});
        event["delta"] = delta;
        event
    }

    fn block_stop(index: u32) -> Value {
        json!({"type": "content_block_stop", "index": index})
    }

    #[test]
    fn chat_stream_becomes_anthropic_events() {
        let events = run_chat_stream(
            "fallback",
            json!([
                delta_chunk(json!({"role": "assistant", "content": ""}), None),
                delta_chunk(json!({"content": "Hel"}), None),
                delta_chunk(json!({"content": "lo"}), None),
                delta_chunk(json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]}), None),
                delta_chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}), None),
                delta_chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}), None),
                delta_chunk(json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                    "function": {"name": "now", "arguments": "{}"}}]}), None),
                {"id": "chatcmpl-9", "model": "gpt-x", "choices": [{"index": 1, "delta": {"content": "other"}}]},
                delta_chunk(json!({}), Some("tool_calls")),
                {"id": "chatcmpl-9", "model": "gpt-x", "choices": [],
                 "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62,
                           "prompt_tokens_details": {"cached_tokens": 20}}}
            ]),
        );
        let json_delta =
            |partial: &str| json!({"type": "input_json_delta", "partial_json": partial});
        assert_eq!(
            events,
            vec![
                message_start("msg_chatcmpl-9", "gpt-x"),
                block_start(0, json!({"type": "text", "text": ""})),
                block_delta(0, json!({"type": "text_delta", "text": "Hel"})),
                block_delta(0, json!({"type": "text_delta", "text": "lo"})),
                block_stop(0),
                block_start(
                    1,
                    json!({"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}})
                ),
                block_delta(1, json_delta("{\"city\":")),
                block_delta(1, json_delta("\"Paris\"}")),
                block_stop(1),
                block_start(
                    2,
                    json!({"type": "tool_use", "id": "call_b", "name": "now", "input": {}})
                ),
                block_delta(2, json_delta("{}")),
                block_stop(2),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                       "usage": {"input_tokens": 30, "output_tokens": 12, "cache_read_input_tokens": 20}}),
                json!({"type": "message_stop"}),
            ]
        );
    }

    #[test]
    fn chat_stream_reopens_text_after_a_tool_and_maps_length() {
        let events = run_chat_stream(
            "fallback",
            json!([
                {"id": "c", "model": "", "choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": 0, "id": "call_a", "function": {"name": "f", "arguments": "{}"}}
                ]}}]},
                {"id": "c", "model": "", "choices": [{"index": 0, "delta": {"content": "after"},
                    "finish_reason": "length"}]}
            ]),
        );
        assert_eq!(
            events,
            vec![
                message_start("msg_c", "fallback"),
                block_start(
                    0,
                    json!({"type": "tool_use", "id": "call_a", "name": "f", "input": {}})
                ),
                block_delta(0, json!({"type": "input_json_delta", "partial_json": "{}"})),
                block_stop(0),
                block_start(1, json!({"type": "text", "text": ""})),
                block_delta(1, json!({"type": "text_delta", "text": "after"})),
                block_stop(1),
                json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
                       "usage": {"input_tokens": 0, "output_tokens": 0}}),
                json!({"type": "message_stop"}),
            ]
        );
    }

    #[test]
    fn chat_stream_without_chunks_is_still_well_formed() {
        assert_eq!(
            run_chat_stream("fallback", json!([])),
            vec![
                message_start("msg_", "fallback"),
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                       "usage": {"input_tokens": 0, "output_tokens": 0}}),
                json!({"type": "message_stop"}),
            ]
        );
    }

    #[test]
    fn streams_translate_there_and_back() {
        // Anthropic events -> OpenAI chunks -> Anthropic events gives the client what the upstream sent.
        let upstream = json!([
            {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x",
                "usage": {"input_tokens": 7, "output_tokens": 1}}},
            block_start(0, json!({"type": "text", "text": ""})),
            block_delta(0, json!({"type": "text_delta", "text": "Hi"})),
            block_stop(0),
            block_start(1, json!({"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}})),
            block_delta(1, json!({"type": "input_json_delta", "partial_json": "{\"a\":1}"})),
            block_stop(1),
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
            {"type": "message_stop"}
        ]);
        let mut there = MessagesToChatStream::new();
        let mut back = ChatToMessagesStream::new("unused");
        let mut events = Vec::new();
        for event in upstream.as_array().unwrap() {
            for chunk in there
                .on_event(serde_json::from_value(event.clone()).unwrap())
                .unwrap()
            {
                events.extend(back.on_chunk(&chunk));
            }
        }
        events.extend(back.finish());
        assert_eq!(
            events.iter().map(to_json).collect::<Vec<_>>(),
            vec![
                message_start("msg_1", "claude-x"),
                block_start(0, json!({"type": "text", "text": ""})),
                block_delta(0, json!({"type": "text_delta", "text": "Hi"})),
                block_stop(0),
                block_start(
                    1,
                    json!({"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}})
                ),
                block_delta(
                    1,
                    json!({"type": "input_json_delta", "partial_json": "{\"a\":1}"})
                ),
                block_stop(1),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                       "usage": {"input_tokens": 7, "output_tokens": 9}}),
                json!({"type": "message_stop"}),
            ]
        );
    }
}
