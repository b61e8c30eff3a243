"""The chat page ``python -m sft serve`` serves at ``/`` (one self-contained HTML document).

It keeps the conversation in the page, sends it whole to ``/v1/chat/completions`` with
``stream: true`` and appends each Server-Sent Event's delta to the answer as it arrives. "New
chat" clears the conversation. Element ids (``input``, ``send``, ``reset``, ``log``, ``status``)
are what the browser test drives; an answer's element gets ``data-done="1"`` when its stream ends.
"""

PAGE = """<!doctype html>
<html lang="zh">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>zhllama chat — __MODEL__</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 48rem; margin: 0 auto; padding: 1rem; }
  #log { border: 1px solid #ccc; border-radius: 6px; padding: .5rem; min-height: 20rem; overflow-y: auto; }
  .msg { white-space: pre-wrap; margin: .4rem 0; padding: .4rem .6rem; border-radius: 6px; }
  .user { background: #e8f0fe; } .assistant { background: #f1f3f4; } .error { background: #fde8e8; }
  form { display: flex; gap: .5rem; margin-top: .5rem; } #input { flex: 1; padding: .4rem; }
</style>
</head>
<body>
<h3>__MODEL__</h3>
<div id="log"></div>
<form id="form">
  <input id="input" autocomplete="off" placeholder="问点什么… / Ask something…">
  <button id="send" type="submit">Send</button>
  <button id="reset" type="button">New chat</button>
</form>
<div id="status"></div>
<script>
const model = "__MODEL__";
let messages = [];
let busy = false;
const log = document.getElementById("log");
const input = document.getElementById("input");
const statusLine = document.getElementById("status");

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

async function send(question) {
  busy = true;
  statusLine.textContent = "generating…";
  messages.push({role: "user", content: question});
  bubble("user", question);
  const answer = bubble("assistant", "");
  let text = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: model, messages: messages, stream: true})});
    if (!response.ok) {
      const body = await response.json();
      throw new Error(body.error ? body.error.message : response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) {
            text += choice.delta.content;
            answer.textContent = text;
            answer.dataset.chunks = String(Number(answer.dataset.chunks || 0) + 1);
            log.scrollTop = log.scrollHeight;
          }
        }
      }
    }
    messages.push({role: "assistant", content: text});
    statusLine.textContent = "";
  } catch (err) {
    messages.pop();  // the question was not answered: not part of the conversation
    answer.className = "msg error";
    answer.textContent = "error: " + err.message;
    statusLine.textContent = "";
  }
  answer.dataset.done = "1";
  busy = false;
}

document.getElementById("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const question = input.value.trim();
  if (!question || busy) return;
  input.value = "";
  send(question);
});
document.getElementById("reset").addEventListener("click", () => {
  if (busy) return;
  messages = [];
  log.innerHTML = "";
  statusLine.textContent = "new chat";
});
</script>
</body>
</html>
"""
