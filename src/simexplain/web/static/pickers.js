// The image pickers of the panels (a, b and the query): the menus of samples, gallery images
// and uploads, and uploading a file from the file input or dropped on the panel (with the
// upload's error beside the control). `createPickers(ctx)` gives `add(panel, onPick)`, which
// wires one panel, and `refill()`, which refreshes every menu from `ctx.state.images`.

import { api, errorText } from "./api.js";
import { $ } from "./dom.js";
import { addUpload, noteError } from "./state.js";

function megabytes(count) { return `${Number((count / 2 ** 20).toPrecision(3))} MB`; }

function fillPicker(select, images) {
  const current = select.value;
  select.innerHTML = "";
  const groups = [["Samples", images.samples], ["Gallery", images.gallery],
    ["Uploads", images.uploads]];
  for (const [label, items] of groups) {
    if (!items.length) continue;
    const group = document.createElement("optgroup");
    group.label = label;
    for (const item of items) {
      const option = document.createElement("option");
      option.value = item.id;
      option.textContent = item.name;
      group.appendChild(option);
    }
    select.appendChild(group);
  }
  if (current) select.value = current;
}

export function createPickers({ state, stats }) {
  const selects = [];

  function refill() {
    for (const select of selects) fillPicker(select, state.images);
  }

  async function upload(file) {
    const limit = state.models && state.models.upload_limit_bytes;
    if (limit && file.size > limit) {
      throw new Error(`${file.name}: the file (${megabytes(file.size)}) is larger than the ` +
        `upload limit of ${megabytes(limit)}`);
    }
    const form = new FormData();
    form.append("file", file, file.name);
    const info = await api("/api/images", form);
    addUpload(state, info);
    refill();
    return info;
  }

  // an upload control with its error beside it ("panel": a, b or query); files dropped on
  // the panel take the same path as the file input
  function add(panel, onPick) {
    const select = $(`#pick-${panel}`);
    const input = $(`#upload-${panel}`);
    const problem = $(`#upload-error-${panel}`);
    selects.push(select);
    select.addEventListener("change", () => onPick(select.value));
    input.addEventListener("change", () => {
      const file = input.files && input.files[0];
      input.value = "";
      if (file) useFile(file);
    });
    const zone = input.closest(".panel");
    let depth = 0; // dragenter/leave fire for every child crossed
    zone.addEventListener("dragenter", (event) => {
      event.preventDefault(); depth += 1; zone.classList.add("dropping");
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
    });
    zone.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (!depth) zone.classList.remove("dropping");
    });
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      depth = 0; zone.classList.remove("dropping");
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) useFile(files[0]);
    });
    async function useFile(file) {
      problem.hidden = true;
      problem.textContent = "";
      input.parentElement.classList.add("uploading");
      try {
        const info = await upload(file);
        select.value = info.id;
        onPick(info.id);
      } catch (error) {
        const message = errorText(error);
        problem.textContent = message.startsWith(file.name) ? message : `${file.name}: ${message}`;
        problem.hidden = false;
        noteError(stats, problem.textContent);
      } finally {
        input.parentElement.classList.remove("uploading");
      }
    }
  }

  return { add, refill };
}
