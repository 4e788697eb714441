// What the page tells the user: the status line and the per-panel states ("a", "b", "query"):
// computing (the old map dimmed under a spinner) or an error on the panel of the image that
// failed. Errors are counted in `stats` (the browser tests read them).

import { errorText } from "./api.js";
import { $ } from "./dom.js";
import { noteError } from "./state.js";

export function createFeedback(stats) {
  function setStatus(message, isError = false) {
    const el = $("#status");
    el.textContent = message || "";
    el.classList.toggle("error", isError);
    if (isError) noteError(stats, message);
  }

  // a failed request, on the status line (an aborted one is not a failure)
  function fail(error) {
    if (error && error.name === "AbortError") return;
    setStatus(errorText(error), true);
  }

  function panelBusy(panel, message) {
    const overlay = $(`#computing-${panel}`);
    overlay.hidden = !message;
    $(".computing-text", overlay).textContent = message || "";
    $(`#view-${panel}`).classList.toggle("stale", Boolean(message));
  }

  function panelError(panel, message) {
    const box = $(`#error-${panel}`);
    box.hidden = !message;
    box.textContent = message || "";
    if (message) noteError(stats, message);
  }

  return { setStatus, fail, panelBusy, panelError };
}
