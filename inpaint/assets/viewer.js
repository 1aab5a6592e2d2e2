// skullsearch case report: the 3D view (skullsearch's own code, Apache-2.0; three.js is vendored
// next to it). Reads the scene from the JSON block "scene-data", draws the skull, the selected
// candidate's aligned face, the extended landmarks (green: matched, red: unmatched) and, where
// there is one, the re-synthesized face. Mouse drag rotates, the wheel zooms; no network.
const blob = (text) => URL.createObjectURL(new Blob([text], { type: "text/javascript" }));
const coreUrl = blob(document.getElementById("three-core").textContent);
const THREE = await import(
  blob(document.getElementById("three-module").textContent.replaceAll("./three.core.min.js", coreUrl)));

const data = JSON.parse(document.getElementById("scene-data").textContent);
const canvas = document.getElementById("viewer");
const bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0)).buffer;

function geometry(m) {
  // positions: uint16 quantized over the mesh's box (origin + q * step), indices uint16/uint32
  const q = new Uint16Array(bytes(m.q));
  const pos = new Float32Array(q.length);
  for (let i = 0; i < q.length; i++) pos[i] = m.origin[i % 3] + q[i] * m.step[i % 3];
  const g = new THREE.BufferGeometry();
  g.setAttribute("position", new THREE.BufferAttribute(pos, 3));
  const idx = m.wide ? new Uint32Array(bytes(m.idx)) : new Uint16Array(bytes(m.idx));
  g.setIndex(new THREE.BufferAttribute(idx, 1));
  g.computeVertexNormals();
  return g;
}

const renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(window.devicePixelRatio || 1);
const scene = new THREE.Scene();
scene.background = new THREE.Color(0xf4f4f2);
const camera = new THREE.PerspectiveCamera(35, 1, 1, 5000);
const light = new THREE.DirectionalLight(0xffffff, 2.2);
scene.add(new THREE.AmbientLight(0xffffff, 0.9), light);

const side = THREE.DoubleSide;
const skullMat = new THREE.MeshLambertMaterial({ color: 0xe3dac9, side });
const faceMat = new THREE.MeshLambertMaterial({ color: 0xd9a58a, side, transparent: true, opacity: 0.5,
                                                depthWrite: false });
const reconMat = new THREE.MeshLambertMaterial({ color: 0x7fa6d9, side, transparent: true, opacity: 0.5,
                                                 depthWrite: false });
const skull = data.skull ? new THREE.Mesh(geometry(data.skull), skullMat) : null;
if (skull) scene.add(skull);
const faceIndex = data.face_index;
const layers = { face: new THREE.Group(), landmarks: new THREE.Group(), recon: new THREE.Group() };
Object.values(layers).forEach((g) => scene.add(g));

const ball = new THREE.SphereGeometry(1.6, 12, 8);
const colours = { matched: 0x1fa83a, unmatched: 0xd62828, face: 0x555555, bone: 0x3366cc };
function balls(points, colour, radius) {
  const list = points.filter((p) => p);
  const mesh = new THREE.InstancedMesh(ball, new THREE.MeshLambertMaterial({ color: colour }), list.length);
  const m = new THREE.Matrix4();
  list.forEach((p, i) => mesh.setMatrixAt(i, m.makeScale(radius, radius, radius).setPosition(p[0], p[1], p[2])));
  return mesh;
}
function lines(pairs, colour) {
  const pts = pairs.flat().map((p) => new THREE.Vector3(p[0], p[1], p[2]));
  return new THREE.LineSegments(new THREE.BufferGeometry().setFromPoints(pts),
                                new THREE.LineBasicMaterial({ color: colour }));
}

// camera: orbit around the scene's centre in the top candidate's face frame (+y up, +z front)
let target = new THREE.Vector3(...data.centre);
let basis = data.basis.map((v) => new THREE.Vector3(...v)); // right, up, front
let dist = data.radius * 3.8, yaw = 0, pitch = 0;
function place() {
  const [r, u, f] = basis;
  const c = Math.cos(pitch);
  const off = f.clone().multiplyScalar(c * Math.cos(yaw)).addScaledVector(r, c * Math.sin(yaw))
    .addScaledVector(u, Math.sin(pitch)).multiplyScalar(dist);
  camera.position.copy(target).add(off);
  camera.up.copy(u);
  camera.lookAt(target);
  light.position.copy(camera.position).addScaledVector(u, dist * 0.5);
  renderer.render(scene, camera);
}
function resize() {
  const w = canvas.clientWidth, h = canvas.clientHeight;
  renderer.setSize(w, h, false);
  camera.aspect = w / h;
  camera.updateProjectionMatrix();
  place();
}
let drag = null;
canvas.addEventListener("pointerdown", (e) => { drag = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); });
canvas.addEventListener("pointerup", () => { drag = null; });
canvas.addEventListener("pointermove", (e) => {
  if (!drag) return;
  yaw -= (e.clientX - drag[0]) * 0.01;
  pitch = Math.max(-1.55, Math.min(1.55, pitch + (e.clientY - drag[1]) * 0.01));
  drag = [e.clientX, e.clientY];
  place();
});
canvas.addEventListener("wheel", (e) => {
  e.preventDefault();
  dist = Math.max(data.radius * 0.3, Math.min(data.radius * 20, dist * Math.exp(e.deltaY * 0.001)));
  place();
}, { passive: false });

function clear(group) {
  group.children.forEach((o) => { if (o.geometry !== ball) o.geometry.dispose(); });
  group.clear();
}
function show(k) {
  const c = data.candidates[k];
  Object.values(layers).forEach(clear);
  layers.face.add(new THREE.Mesh(geometry({ ...c.face, idx: faceIndex.idx, wide: faceIndex.wide }), faceMat));
  const matched = [], unmatched = [], face = [], residual = [];
  c.points.forEach((p, i) => {
    const n = data.extended[i];
    if (!n || c.matched[i] === null) return;
    (c.matched[i] ? matched : unmatched).push(n);
    face.push(p);
    residual.push([n, p]);
  });
  layers.landmarks.add(balls(matched, colours.matched, 1.0), balls(unmatched, colours.unmatched, 1.0),
                       balls(face, colours.face, 0.55), balls(data.skull_points, colours.bone, 0.7),
                       lines(residual, 0x333333), lines(data.pegs, 0x8888aa));
  const rec = data.reconstructions[String(c.face_id)];
  if (rec) layers.recon.add(new THREE.Mesh(geometry(rec), reconMat));
  document.getElementById("toggle-recon").disabled = !rec;
  document.querySelectorAll(".cand-detail").forEach((el) => { el.hidden = el.dataset.k !== String(k); });
  document.querySelectorAll("#cand-buttons button").forEach((b) => b.classList.toggle("on", b.dataset.k === String(k)));
  applyToggles();
}
function applyToggles() {
  const on = (id) => document.getElementById(id).checked;
  if (skull) skull.visible = on("toggle-skull");
  layers.face.visible = on("toggle-face");
  layers.landmarks.visible = on("toggle-landmarks");
  layers.recon.visible = on("toggle-recon");
  place();
}
document.querySelectorAll("#viewer-controls input").forEach((el) => el.addEventListener("change", applyToggles));
document.querySelectorAll("#cand-buttons button").forEach((b) => b.addEventListener("click", () => show(Number(b.dataset.k))));
window.addEventListener("resize", resize);
resize();
if (data.candidates.length) show(0);
const tri = renderer.info.render.triangles;
const reconTri = layers.recon.children.reduce((n, o) => n + o.geometry.index.count / 3, 0);
canvas.dataset.rendered = String(tri);
console.log(`skullsearch-viewer: rendered ${tri} triangles, ${data.candidates.length} candidate(s), ` +
            `re-synthesized face ${reconTri} triangles`);
