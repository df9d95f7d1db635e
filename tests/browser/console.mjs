// Drives the lookalike console in Debian's chromium against a real
// server: node console.mjs <server url> <grocery dir> <artefact dir>.
// Exits non-zero (with the reason) when any check fails.
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import assert from "node:assert/strict";

const [base, grocery, out] = process.argv.slice(2);
mkdirSync(out, { recursive: true });
const BANANA = 6;
const rows = (file) => readFileSync(join(grocery, file), "utf8").split("\n").filter((l) => l.trim())
  .map((l) => { const [path, cls] = l.split(",").map((s) => s.trim()); return { path, cls: Number(cls) }; });
const gallery = [0, BANANA, 20, 40].flatMap((c) => rows("test.txt").filter((r) => r.cls === c).slice(0, 5));
const bananaIds = new Set(gallery.filter((r) => r.cls === BANANA).map((r) => basename(r.path)));
const query = rows("val.txt").find((r) => r.cls === BANANA);

let t = Date.now();
const step = async (name) => {
  await page.screenshot({ path: join(out, `${name}.png`), fullPage: true });
  console.log(`browser: ${name} ${Date.now() - t} ms`);
  t = Date.now();
};

const profile = mkdtempSync(join(tmpdir(), "lookalike-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run"],
  viewport: { width: 1280, height: 900 },
});
// Records the search options each request carries (multipart bodies are
// not visible to request inspection, so read them as the page sends them).
await context.addInitScript(() => {
  window.sentOptions = [];
  const send = window.fetch;
  window.fetch = async (url, init) => {
    if (String(url).endsWith("/search") && init && init.body instanceof FormData) {
      window.sentOptions.push(await init.body.get("options").text());
    }
    return send(url, init);
  };
});
const page = context.pages()[0] || await context.newPage();
page.setDefaultTimeout(60_000);
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(String(e)));
// Drops `files` ({name, bytes, type}) on `selector` as a user's drag would.
const drop = async (selector, files) => {
  const dt = await page.evaluateHandle((files) => {
    const dt = new DataTransfer();
    for (const f of files) dt.items.add(new File([Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0))], f.name, { type: f.type }));
    return dt;
  }, files.map((f) => ({ name: f.name, type: f.type, b64: Buffer.from(f.bytes).toString("base64") })));
  await page.dispatchEvent(selector, "drop", { dataTransfer: dt });
};
const isSearch = (r) => r.url().endsWith("/v1/galleries/groc/search") && r.request().method() === "POST";
const hitIds = () => page.$$eval("#hits .hit", (hs) => hs.map((h) => h.dataset.id));

try {
  await page.goto(base + "/");
  await step("01-opened");

  // Create a gallery.
  await page.click("#settings summary");
  await page.fill("#new-gallery", "groc");
  await page.click("#create-gallery");
  await page.waitForFunction(() => document.querySelector("#gallery-select").value === "groc");
  await step("02-created");

  // Add photos with the page's own upload control.
  await page.setInputFiles("#add-files", gallery.map((r) => join(grocery, r.path)));
  await page.waitForFunction((n) => document.querySelector("#add-summary").textContent.startsWith(`added ${n},`), gallery.length);
  const outcomes = await page.$$eval("#outcomes li", (ls) => ls.map((l) => l.className));
  assert.deepEqual(outcomes, gallery.map(() => "added"));
  await page.waitForFunction((n) => document.querySelector("#stats").textContent.includes(`items${n}`), gallery.length);
  await step("03-added");

  // Drop a banana photo from grocery val: banana photos come first.
  await drop("#query-drop", [{ name: basename(query.path), type: "image/jpeg", bytes: readFileSync(join(grocery, query.path)) }]);
  const sent = (n) => page.waitForFunction((n) => window.sentOptions.length >= n && window.sentOptions[n - 1], n)
    .then((h) => h.jsonValue());
  const withKr = await sent(1);
  assert.match(withKr, /"k_reciprocal":\{"enabled":true\}/);
  await page.waitForSelector("#hits .hit");
  const ids = await hitIds();
  assert.ok(ids.slice(0, 3).every((id) => bananaIds.has(id)), `first hits ${ids.slice(0, 3)} are not all bananas`);
  // Thumbnails loaded.
  await page.waitForFunction(() => [...document.querySelectorAll("#hits img")].every((i) => i.complete && i.naturalWidth > 0));
  const widths = await page.$$eval("#hits img", (is) => is.map((i) => i.naturalWidth));
  assert.ok(widths.length === ids.length && widths.every((w) => w > 0), `thumbnail widths ${widths}`);
  assert.match(await page.textContent("#timings"), /embed .* ms/);
  await step("04-results");

  // Toggling re-ranking sends the option and the page shows the new ranking.
  const answered = page.waitForResponse(isSearch);
  await page.uncheck("#kr-toggle");
  const withoutKr = await sent(2);
  assert.match(withoutKr, /"k_reciprocal":\{"enabled":false\}/);
  const stagesOff = (await (await answered).json()).stages;
  assert.ok(!stagesOff.some((s) => s.includes("k_reciprocal") || s === "kr"), `stages ${stagesOff}`);
  await page.waitForFunction((s) => document.querySelector("#timings").textContent.startsWith(`stages: ${s.join(" → ") || "none"};`), stagesOff);
  await step("05-without-kr");

  // A bad file shows the server's own message.
  const bad = Buffer.from("this is not a photo");
  const direct = await fetch(base + "/v1/galleries/groc/search", { method: "POST", body: bad, headers: { "content-type": "image/jpeg" } });
  const message = (await direct.json()).error.message;
  assert.equal(direct.status, 400);
  await drop("#query-drop", [{ name: "bad.jpg", type: "image/jpeg", bytes: bad }]);
  await page.waitForFunction((m) => document.querySelector("#error").textContent === m && !document.querySelector("#error").hidden, message);
  await step("06-bad-file");

  // Remove an item from the results: it leaves the list and the count.
  await page.fill("#query-id", ids[0]);
  await page.click("#search-id");
  await page.waitForFunction((id) => !!document.querySelector("#hits .hit") && document.querySelector("#error").hidden
    && ![...document.querySelectorAll("#hits .hit")].some((h) => h.dataset.id === id), ids[0]);
  const gone = (await hitIds())[0];
  await page.click(`#hits .hit >> nth=0 >> .remove`);
  await page.waitForFunction(({ id, n }) => ![...document.querySelectorAll("#hits .hit")].some((h) => h.dataset.id === id)
    && document.querySelector("#stats").textContent.includes(`items${n}`), { id: gone, n: gallery.length - 1 });
  await step("07-removed");

  // A folder through the folder control, with an id prefix: each id is
  // the prefix and the file's path inside the folder.
  const shelf = join(mkdtempSync(join(tmpdir(), "lookalike-folder-")), "shelf");
  mkdirSync(shelf);
  const extra = rows("test.txt").filter((r) => r.cls === 20).slice(5, 7);
  assert.equal(extra.length, 2);
  for (const r of extra) writeFileSync(join(shelf, basename(r.path)), readFileSync(join(grocery, r.path)));
  await page.fill("#id-prefix", "store-1/");
  await page.setInputFiles("#add-folder", shelf);
  const want = extra.map((r) => `store-1/shelf/${basename(r.path)}`).sort();
  await page.waitForFunction((n) => document.querySelectorAll("#outcomes li").length === n, want.length);
  const folderOutcomes = await page.$$eval("#outcomes li", (ls) => ls.map((l) => [l.className, l.textContent.split(":")[0]]));
  assert.deepEqual(folderOutcomes.map((o) => o[0]), ["added", "added"]);
  assert.deepEqual(folderOutcomes.map((o) => o[1]).sort(), want);
  const stored = await fetch(`${base}/v1/galleries/groc/items/${encodeURIComponent(want[0])}`);
  assert.equal(stored.status, 200);
  await page.waitForFunction((n) => document.querySelector("#stats").textContent.includes(`items${n}`), gallery.length + 1);
  rmSync(join(shelf, ".."), { recursive: true, force: true });
  await step("08-folder-with-prefix");

  await page.setViewportSize({ width: 390, height: 844 });
  await step("09-phone");
  assert.deepEqual(pageErrors, []);
  writeFileSync(join(out, "result.txt"), "ok\n");
} catch (e) {
  await page.screenshot({ path: join(out, "failure.png"), fullPage: true }).catch(() => {});
  console.error(`browser test failed: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
