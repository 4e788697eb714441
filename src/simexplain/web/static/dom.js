// Small DOM helpers of the page: `$` (querySelector) and `escapeHtml` for text put into HTML.

export const $ = (selector, root = document) => root.querySelector(selector);

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;" }[c]));
}
