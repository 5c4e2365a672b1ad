// Runs the viewer page's script under a minimal fake DOM: node html_page_harness.js PAGE "[t0, t1, ...]"
// prints, per playback time, the chart cursors' x and the values text the page shows.
const fs = require("fs");
const page = fs.readFileSync(process.argv[2], "utf8");
const dataText = page.match(/id="episode-data">([\s\S]*?)<\/script>/)[1];
const script = page.match(/<script>([\s\S]*?)<\/script>/)[1];
function element(attrs) {
  const el = { attrs: { ...attrs }, dataset: {}, listeners: {}, textContent: "",
    setAttribute(k, v) { this.attrs[k] = v; }, getAttribute(k) { return this.attrs[k]; },
    addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); } };
  return el;
}
const cursors = [...page.matchAll(/class="cursor"[^>]*data-left="([\d.]+)" data-right="([\d.]+)"/g)].map((m) => {
  const c = element({}); c.dataset.left = m[1]; c.dataset.right = m[2]; return c; });
const svgs = cursors.map((c) => { const s = element({}); s.querySelector = () => c; return s; });
const video = element({}); video.currentTime = 0; video.paused = true;
const values = element({}); const data = element({}); data.textContent = dataText;
global.document = {
  getElementById: (id) => ({ "episode-data": data, video, values })[id],
  querySelectorAll: () => svgs,
};
global.requestAnimationFrame = () => 0;
eval(script);
const out = [];
for (const t of JSON.parse(process.argv[3])) {
  video.currentTime = t; video.listeners.timeupdate.forEach((f) => f());
  out.push({ x: cursors.map((c) => +c.attrs.x1), text: values.textContent });
}
console.log(JSON.stringify(out));
