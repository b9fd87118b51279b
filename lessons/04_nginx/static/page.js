// Lesson 04's upload page: send a photo to POST /infer?format=png and draw
// the palette-PNG mask over it. Everything it shows comes from the answer:
// the mask, its classes (X-Classes), who made it (X-Upstream from nginx,
// X-Worker-Pid and X-Model-Weights from the app) and how long it took.
"use strict";

// lessons/02_segmentation/voc.py's classes and colour map, so the legend's
// colours are the mask's own.
const CLASSES = [
  "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
  "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
  "pottedplant", "sheep", "sofa", "train", "tvmonitor",
];

function vocColour(label) {
  let r = 0, g = 0, b = 0;
  for (let shift = 7; shift >= 0; shift--, label >>= 3) {
    r |= (label & 1) << shift;
    g |= ((label >> 1) & 1) << shift;
    b |= ((label >> 2) & 1) << shift;
  }
  return [r, g, b];
}

const $ = (id) => document.getElementById(id);
const view = $("view");
let shown = null;   // {photo, overlay}: what the opacity slider redraws
let uploads = 0;    // the newest upload wins if two overlap

function draw() {
  if (!shown) return;
  const ctx = view.getContext("2d");
  ctx.globalAlpha = 1;
  ctx.drawImage(shown.photo, 0, 0);
  ctx.globalAlpha = Number($("opacity").value);
  // The app returns the mask at the upload's size: it covers the photo pixel
  // for pixel (scaled only if a server ever answered otherwise).
  ctx.drawImage(shown.overlay, 0, 0, view.width, view.height);
}

// The mask as an image whose background pixels are transparent, so the
// photo shows through them at any opacity.
async function overlayOf(png) {
  // The palette's exact colours: no colour management, no premultiplying.
  const mask = await createImageBitmap(png, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = document.createElement("canvas");
  canvas.width = mask.width;
  canvas.height = mask.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(mask, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] === 0 && d[i + 1] === 0 && d[i + 2] === 0) d[i + 3] = 0;   // class 0's colour is black
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

// The photo as the app saw it: turned upright by its EXIF orientation, as the
// app's decoder does, so mask and photo line up.
async function photoOf(file) {
  try {
    return await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (err) {
    return await createImageBitmap(file);   // a browser without that option orients by default
  }
}

function showLegend(names) {
  const legend = $("legend");
  legend.replaceChildren();
  for (const name of names) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    // Set through the DOM: the CSP refuses style="" attributes in markup.
    swatch.style.backgroundColor = `rgb(${vocColour(CLASSES.indexOf(name)).join(",")})`;
    item.append(swatch, name);
    legend.append(item);
  }
}

function addAnswerRow(resp, roundTripMs) {
  const row = document.createElement("tr");
  for (const value of [resp.headers.get("X-Upstream"), resp.headers.get("X-Worker-Pid"),
                       resp.headers.get("X-Model-Weights"), resp.headers.get("X-Inference-Ms"),
                       roundTripMs.toFixed(1)]) {
    const cell = document.createElement("td");
    cell.textContent = value ?? "-";
    row.append(cell);
  }
  $("answers").prepend(row);
}

async function errorOf(resp) {
  // The app and nginx answer errors as JSON: {"error": "..."}.
  try {
    return (await resp.json()).error || `${resp.status} ${resp.statusText}`;
  } catch (err) {
    return `${resp.status} ${resp.statusText}`;
  }
}

async function segment(file) {
  const mine = ++uploads;
  $("status").textContent = `Segmenting ${file.name} ...`;
  $("error").hidden = true;
  const started = performance.now();
  let resp, png;
  try {
    resp = await fetch("/infer?format=png", { method: "POST", body: file });
    png = resp.ok ? await resp.blob() : null;
  } catch (err) {
    return fail(mine, `no answer from the server: ${err.message}`);
  }
  const roundTrip = performance.now() - started;
  if (!resp.ok) return fail(mine, await errorOf(resp));

  const [photo, overlay] = await Promise.all([photoOf(file), overlayOf(png)]);
  if (mine !== uploads) return;   // a newer upload is on its way
  view.width = photo.width;
  view.height = photo.height;
  shown = { photo, overlay };
  draw();
  showLegend((resp.headers.get("X-Classes") || "").split(",").filter(Boolean));
  addAnswerRow(resp, roundTrip);
  $("untrained").hidden = resp.headers.get("X-Model-Weights") !== "random";
  $("result").hidden = false;
  $("status").textContent = `${file.name}: ${photo.width}x${photo.height}, answered in ${roundTrip.toFixed(0)} ms.`;
  document.body.dataset.done = String(mine);   // for the checks: this upload is drawn
}

function fail(mine, message) {
  if (mine !== uploads) return;
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "The server refused the file.";
  document.body.dataset.done = String(mine);
}

$("file").addEventListener("change", (event) => {
  if (event.target.files.length) segment(event.target.files[0]);
  event.target.value = "";   // choosing the same file again is a new upload
});
$("opacity").addEventListener("input", draw);

const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) segment(event.dataTransfer.files[0]);
});
