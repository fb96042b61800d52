// dreamtalk-live browser client: portrait pick/upload, emotion control, WHIP (microphone or an
// audio file) or WHEP (watch an existing session), the avatar's video and live stats.
// Plain ES module, no dependencies. The server contract is docs/server.md.

const $ = (id) => document.getElementById(id);

const ui = {
  status: $('status'),
  statusText: $('status-text'),
  tagline: $('tagline'),
  error: $('error'),
  errorTitle: $('error-title'),
  errorText: $('error-text'),
  errorClose: $('error-close'),
  video: $('avatar-video'),
  stage: $('stage'),
  stageOverlay: $('stage-overlay'),
  stagePoster: $('stage-poster'),
  stageHint: $('stage-hint'),
  unmute: $('unmute'),
  start: $('start'),
  startLabel: $('start-label'),
  stop: $('stop'),
  audioFile: $('audio-file'),
  audioFileLabel: $('audio-file-label'),
  sourceLine: $('source-line'),
  avatarPanel: $('avatar-panel'),
  avatars: $('avatars'),
  dropzone: $('dropzone'),
  upload: $('upload'),
  uploadHint: $('upload-hint'),
  uploadStatus: $('upload-status'),
  uploadName: $('upload-name'),
  uploadStage: $('upload-stage'),
  uploadProgress: $('upload-progress'),
  uploadProgressBar: $('upload-progress-bar'),
  uploadMessage: $('upload-message'),
  emotion: $('emotion'),
  intensity: $('intensity'),
  intensityValue: $('intensity-value'),
  codec: $('codec'),
  codecField: $('codec-field'),
  emotionNote: $('emotion-note'),
  stats: $('stats'),
  sessionId: $('session-id'),
  sessionState: $('session-state'),
  sessionJson: $('session-json'),
};

const params = new URLSearchParams(location.search);
const viewerSessionId = params.get('session'); // ?session=<id>: watch it over WHEP
const POLL_MS = 300; // avatar registration polling
const ICE_GATHER_CAP_MS = 2000;
const PLAY_TIMEOUT_MS = 30000;
const DEFAULT_CONFIG = {
  emotions: ['neutral', 'happy', 'sad', 'angry', 'surprised', 'fearful', 'disgusted', 'contempt'],
  intensities: [1, 2, 3],
  ice_servers: [],
  video_codecs: ['vp8', 'h264'],
  default_avatar: 'default',
  max_upload_bytes: null,
};

let config = { ...DEFAULT_CONFIG };
let avatars = []; // as GET /avatars lists them, plus uploads still registering
let selectedAvatar = params.get('avatar') || 'default';
let state = 'idle';
let session = null; // the current session (see newSession)
let lastSessionId = null;
const stats = {}; // the latest numbers, exposed as window.dreamtalk.stats

// ---------------------------------------------------------------------------------------------
// Small helpers

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'HttpError';
    this.status = status;
  }
}

/** fetch() that turns network failures and non-2xx answers into errors with a readable message. */
async function request(url, init = {}, what = 'The request') {
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (err) {
    throw new Error(`${what} failed: the server could not be reached (${err.message}).`);
  }
  if (!resp.ok) {
    let text = '';
    try {
      text = (await resp.text()).trim();
    } catch {
      /* no body */
    }
    if (text.startsWith('<')) text = ''; // an HTML error page says nothing useful here
    let msg = text || resp.statusText || 'no details';
    if (resp.status === 503) {
      const retry = resp.headers.get('Retry-After');
      msg += retry ? ` Try again in ${retry} s.` : ' Try again shortly.';
    }
    throw new HttpError(resp.status, `${what} failed (HTTP ${resp.status}): ${msg}`);
  }
  return resp;
}

function capitalize(s) {
  return s ? s[0].toUpperCase() + s.slice(1) : s;
}

function formatBitrate(bps) {
  if (bps == null || !Number.isFinite(bps)) return '–';
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbps`;
  return `${Math.round(bps / 1e3)} kbps`;
}

function formatMs(ms) {
  if (ms == null || !Number.isFinite(ms)) return '–';
  return ms >= 100 ? `${Math.round(ms)} ms` : `${ms.toFixed(1)} ms`;
}

function formatFps(fps) {
  if (fps == null || !Number.isFinite(fps)) return '–';
  return fps.toFixed(1);
}

function formatTime(s) {
  if (!Number.isFinite(s)) return '–:––';
  const m = Math.floor(s / 60);
  const sec = Math.floor(s % 60);
  return `${m}:${String(sec).padStart(2, '0')}`;
}

/**
 * RTCIceServer list from /config's ice_servers: entries may be URL strings or {urls}; a TURN URL
 * with credentials in it (turn:user:pass@host:port, the server's --ice-server form) is split
 * into urls/username/credential, which browsers require.
 */
function iceServers(list) {
  const out = [];
  for (const entry of Array.isArray(list) ? list : []) {
    const server = typeof entry === 'string' ? { urls: entry } : { ...entry };
    const urls = [].concat(server.urls || []);
    for (const url of urls) {
      const m = /^(turns?):([^:@/]+):([^@/]+)@(.+)$/.exec(url);
      if (m && !server.username) {
        out.push({
          urls: `${m[1]}:${m[4]}`,
          username: decodeURIComponent(m[2]),
          credential: decodeURIComponent(m[3]),
        });
      } else {
        out.push({ ...server, urls: url });
      }
    }
  }
  return out;
}

function avatarImageUrl(av) {
  const base = av.image || `/avatars/${encodeURIComponent(av.id)}/image`;
  // The image changes from the upload to the registered crop once ready.
  return `${base}${base.includes('?') ? '&' : '?'}v=${encodeURIComponent(av.status || '')}`;
}

// ---------------------------------------------------------------------------------------------
// Banner and state

function showBanner(title, text, kind = 'error') {
  ui.errorTitle.textContent = title;
  ui.errorText.textContent = text || '';
  ui.error.classList.toggle('banner-info', kind === 'info');
  ui.error.classList.toggle('banner-error', kind !== 'info');
  ui.error.hidden = false;
}

function hideBanner() {
  ui.error.hidden = true;
}

const STATUS_TEXT = { idle: 'Ready', connecting: 'Connecting…', live: 'Live', error: 'Error' };

function setState(next) {
  state = next;
  document.body.dataset.state = next;
  ui.statusText.textContent = STATUS_TEXT[next] ?? next;
  const busy = next === 'connecting' || next === 'live';
  ui.start.disabled = busy;
  ui.stop.disabled = !busy;
  // During a live file/mic session a new file swaps the source in place (replaceTrack).
  const fileOk = !busy || (next === 'live' && session && session.source !== 'whep');
  ui.audioFile.disabled = !fileOk;
  ui.audioFileLabel.classList.toggle('disabled', !fileOk);
  ui.stageOverlay.hidden = next === 'live';
  ui.stage.classList.toggle('is-connecting', next === 'connecting');
  if (next === 'connecting') ui.stageHint.textContent = 'Connecting…';
  else if (next !== 'live') ui.stageHint.textContent = idleHint();
  updateEmotionNote();
  ui.sessionId.textContent = session?.id ?? lastSessionId ?? '–';
}

function idleHint() {
  if (viewerSessionId) return `Press “Watch session” to see session ${viewerSessionId}.`;
  return 'Pick a portrait, then start the microphone or play an audio file.';
}

function updateEmotionNote() {
  if (viewerSessionId) ui.emotionNote.textContent = 'Changes apply to the watched session live.';
  else if (state === 'live') ui.emotionNote.textContent = 'Changes apply live.';
  else ui.emotionNote.textContent = 'Applies when the session starts; changes then apply live.';
}

// ---------------------------------------------------------------------------------------------
// Configuration, emotions

async function loadConfig() {
  const resp = await request('/config', {}, 'Loading /config');
  const cfg = await resp.json();
  config = { ...DEFAULT_CONFIG, ...cfg };
  if (!params.get('avatar') && config.default_avatar) selectedAvatar = config.default_avatar;
}

function renderControls() {
  const wantEmotion = params.get('emotion') || ui.emotion.value || 'neutral';
  ui.emotion.replaceChildren(
    ...config.emotions.map((e) => new Option(capitalize(e), e, false, e === wantEmotion)),
  );
  if (!config.emotions.includes(wantEmotion)) ui.emotion.value = config.emotions[0];

  const ints = (config.intensities || [1, 2, 3]).map(Number);
  ui.intensity.min = String(Math.min(...ints));
  ui.intensity.max = String(Math.max(...ints));
  const wantIntensity = Number(params.get('intensity'));
  if (ints.includes(wantIntensity)) ui.intensity.value = String(wantIntensity);
  ui.intensityValue.textContent = ui.intensity.value;

  const codecs = config.video_codecs || [];
  ui.codec.replaceChildren(...codecs.map((c) => new Option(c.toUpperCase(), c)));
  if (params.get('video_codec') && codecs.includes(params.get('video_codec'))) {
    ui.codec.value = params.get('video_codec');
  }
  ui.codecField.hidden = codecs.length < 2 || Boolean(viewerSessionId);

  if (config.max_upload_bytes) {
    const mb = config.max_upload_bytes / (1024 * 1024);
    ui.uploadHint.textContent = `A frontal photo with one face. PNG, JPEG or WebP, up to ${
      mb >= 1 ? `${+mb.toFixed(1)} MB` : `${Math.round(config.max_upload_bytes / 1024)} KB`
    }.`;
  }
}

function currentEmotion() {
  return { emotion: ui.emotion.value, intensity: Number(ui.intensity.value) };
}

let controlBusy = false;
let controlPending = false;

/** Send the selected emotion to the running session; coalesces quick changes. */
async function sendEmotion() {
  const id = viewerSessionId || session?.id;
  if (!id || (!viewerSessionId && state !== 'live')) return;
  if (controlBusy) {
    controlPending = true;
    return;
  }
  controlBusy = true;
  try {
    do {
      controlPending = false;
      const want = currentEmotion();
      await request(
        `/sessions/${encodeURIComponent(id)}/control`,
        {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ type: 'set_emotion', ...want }),
        },
        'Changing the emotion',
      );
      if (session) session.sentEmotion = want;
    } while (controlPending);
  } catch (err) {
    showBanner('Could not change the emotion', err.message);
  } finally {
    controlBusy = false;
  }
}

function setEmotion(emotion, intensity) {
  if (emotion != null) ui.emotion.value = emotion;
  if (intensity != null) ui.intensity.value = String(intensity);
  ui.intensityValue.textContent = ui.intensity.value;
  return sendEmotion();
}

// ---------------------------------------------------------------------------------------------
// Avatars: the picker and uploads

async function loadAvatars() {
  const resp = await request('/avatars', {}, 'Loading the portraits');
  const data = await resp.json();
  const listed = Array.isArray(data.avatars) ? data.avatars : [];
  // Keep uploads of ours that the list does not show yet.
  const known = new Set(listed.map((a) => a.id));
  avatars = listed.concat(avatars.filter((a) => !known.has(a.id) && a.status === 'registering'));
  if (!avatars.some((a) => a.id === selectedAvatar && a.status === 'ready')) {
    const fallback = avatars.find((a) => a.id === config.default_avatar && a.status === 'ready')
      || avatars.find((a) => a.status === 'ready');
    if (fallback) selectedAvatar = fallback.id;
  }
  renderAvatars();
}

function renderAvatars() {
  const items = avatars.filter((a) => a.status !== 'failed');
  if (!items.length) {
    const empty = document.createElement('p');
    empty.className = 'avatars-empty';
    empty.textContent = 'No portraits yet: upload one below.';
    ui.avatars.replaceChildren(empty);
    updatePoster();
    return;
  }
  ui.avatars.replaceChildren(
    ...items.map((av) => {
      const btn = document.createElement('button');
      btn.type = 'button';
      btn.className = 'avatar-thumb';
      btn.dataset.id = av.id;
      btn.setAttribute('role', 'radio');
      const selected = av.id === selectedAvatar;
      btn.setAttribute('aria-checked', String(selected));
      btn.classList.toggle('selected', selected);
      btn.title = av.id === config.default_avatar ? `${av.id} (default)` : av.id;
      const img = document.createElement('img');
      img.src = avatarImageUrl(av);
      img.alt = `Portrait ${av.id}`;
      img.loading = 'lazy';
      btn.append(img);
      if (av.status !== 'ready') {
        btn.disabled = true;
        btn.classList.add('registering');
        const badge = document.createElement('span');
        badge.className = 'thumb-badge';
        badge.textContent = `${Math.round((av.progress || 0) * 100)}%`;
        btn.append(badge);
      }
      btn.addEventListener('click', () => selectAvatar(av.id));
      return btn;
    }),
  );
  updatePoster();
}

function selectAvatar(id) {
  const av = avatars.find((a) => a.id === id);
  if (!av || av.status !== 'ready') return false;
  selectedAvatar = id;
  renderAvatars();
  if (state === 'live' || state === 'connecting') {
    ui.sourceLine.hidden = false;
    ui.sourceLine.textContent = `Portrait “${id}” will be used for the next session.`;
  }
  return true;
}

function updatePoster() {
  const av = avatars.find((a) => a.id === selectedAvatar);
  if (av && !viewerSessionId) {
    ui.stagePoster.src = avatarImageUrl(av);
    ui.stagePoster.hidden = false;
  } else {
    ui.stagePoster.hidden = true;
  }
}

function showUpload({ name, stage, progress, message, kind }) {
  ui.uploadStatus.hidden = false;
  if (name != null) ui.uploadName.textContent = name;
  if (stage != null) ui.uploadStage.textContent = stage;
  if (progress != null) {
    const pct = Math.max(0, Math.min(100, Math.round(progress * 100)));
    ui.uploadProgressBar.style.width = `${pct}%`;
    ui.uploadProgress.setAttribute('aria-valuenow', String(pct));
  }
  ui.uploadStatus.dataset.kind = kind || 'busy';
  ui.uploadMessage.textContent = message || '';
  ui.uploadMessage.hidden = !message;
}

let uploadSeq = 0;

/** Upload a portrait, poll its registration, select it when ready. Resolves to the avatar. */
async function uploadPortrait(file) {
  const seq = ++uploadSeq;
  const name = file.name || 'portrait';
  showUpload({ name, stage: 'Uploading…', progress: 0, message: '', kind: 'busy' });
  let av;
  try {
    const resp = await request(
      '/avatars',
      {
        method: 'POST',
        headers: { 'Content-Type': file.type || 'application/octet-stream' },
        body: file,
      },
      'The upload',
    );
    av = await resp.json();
  } catch (err) {
    if (seq === uploadSeq) {
      showUpload({ stage: 'Upload failed', progress: 0, message: err.message, kind: 'error' });
    }
    throw err;
  }
  avatars = avatars.filter((a) => a.id !== av.id).concat([av]);
  renderAvatars();

  let failures = 0;
  for (;;) {
    if (seq === uploadSeq) {
      showUpload({
        stage: capitalize(av.stage || av.status || 'registering'),
        progress: av.progress ?? 0,
        kind: 'busy',
      });
    }
    if (av.status === 'ready' || av.status === 'failed') break;
    await sleep(POLL_MS);
    try {
      const resp = await request(`/avatars/${encodeURIComponent(av.id)}`, {}, 'Checking the portrait');
      av = await resp.json();
      failures = 0;
    } catch (err) {
      if ((err instanceof HttpError && err.status === 404) || ++failures >= 10) {
        av = { ...av, status: 'failed', error: err.message };
        break;
      }
      continue;
    }
    avatars = avatars.map((a) => (a.id === av.id ? av : a));
    // Cheap: only the badge changes while registering.
    const badge = ui.avatars.querySelector(`[data-id="${CSS.escape(av.id)}"] .thumb-badge`);
    if (badge) badge.textContent = `${Math.round((av.progress || 0) * 100)}%`;
  }

  avatars = avatars.map((a) => (a.id === av.id ? av : a));
  if (av.status === 'ready') {
    await loadAvatars().catch(() => renderAvatars());
    selectAvatar(av.id);
    if (seq === uploadSeq) {
      showUpload({ stage: 'Ready', progress: 1, message: 'Portrait registered and selected.', kind: 'ok' });
    }
  } else {
    renderAvatars();
    if (seq === uploadSeq) {
      showUpload({
        stage: 'Registration failed',
        progress: av.progress ?? 0,
        message: capitalize(av.error || 'the portrait could not be registered'),
        kind: 'error',
      });
    }
  }
  return av;
}

function onPortraitFile(file) {
  if (!file) return;
  uploadPortrait(file).catch(() => {}); // shown in the upload area
}

// ---------------------------------------------------------------------------------------------
// Sessions: WHIP (mic / file) and WHEP (viewer)

function newSession(source) {
  const sess = {
    source, // 'mic' | 'file' | 'whep'
    pc: null,
    id: null,
    location: null,
    localStream: null,
    audioCtx: null,
    audioEl: null,
    objectUrl: null,
    remoteStream: new MediaStream(),
    ended: false,
    sentEmotion: null,
    timers: [],
    rvfc: null,
    frames: { count: 0, presented: null, delays: [] },
  };
  sess.failed = new Promise((_, reject) => {
    sess.fail = reject;
  });
  sess.failed.catch(() => {});
  return sess;
}

function micError(err) {
  if (err.name === 'NotAllowedError' || err.name === 'SecurityError') {
    return 'Microphone access was denied. Allow it in the browser (the icon in the address bar) and try again.';
  }
  if (err.name === 'NotFoundError' || err.name === 'OverconstrainedError') {
    return 'No microphone was found. Plug one in, or play an audio file instead.';
  }
  if (err.name === 'NotReadableError') {
    return 'The microphone is in use by another application or could not be opened.';
  }
  if (!navigator.mediaDevices?.getUserMedia) {
    return 'This page needs a secure context (https or localhost) to use the microphone.';
  }
  return `Could not open the microphone: ${err.message || err.name}`;
}

async function openMic(sess) {
  if (!navigator.mediaDevices?.getUserMedia) throw new Error(micError(new Error('')));
  try {
    sess.localStream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      video: false,
    });
  } catch (err) {
    throw new Error(micError(err));
  }
  const track = sess.localStream.getAudioTracks()[0];
  sess.sourceText = `Microphone: ${track?.label || 'default'}`;
  return track;
}

/** Decode an audio file through an <audio> element into a MediaStream track (silent locally). */
async function openFile(sess, { file, url }) {
  const src = file ? URL.createObjectURL(file) : url;
  if (file) sess.objectUrl = src;
  const name = file?.name || (url ? decodeURIComponent(url.split('/').pop()) : 'audio');
  const el = new Audio();
  el.preload = 'auto';
  el.crossOrigin = 'anonymous';
  el.src = src;
  await new Promise((resolve, reject) => {
    const ok = () => {
      cleanup();
      resolve();
    };
    const bad = () => {
      cleanup();
      reject(new Error(`The browser cannot play “${name}” (${el.error?.message || 'unsupported or damaged audio'}).`));
    };
    const cleanup = () => {
      el.removeEventListener('canplay', ok);
      el.removeEventListener('error', bad);
    };
    el.addEventListener('canplay', ok);
    el.addEventListener('error', bad);
  });
  const ctx = sess.audioCtx || new (window.AudioContext || window.webkitAudioContext)();
  sess.audioCtx = ctx;
  const node = ctx.createMediaElementSource(el); // not connected to ctx.destination: silent here
  const dest = ctx.createMediaStreamDestination();
  node.connect(dest);
  await ctx.resume().catch(() => {});
  const track = dest.stream.getAudioTracks()[0];
  return { el, track, name, stream: dest.stream };
}

function attachFile(sess, opened) {
  if (sess.audioEl) {
    sess.audioEl.pause();
    sess.audioEl.removeAttribute('src');
  }
  sess.audioEl = opened.el;
  sess.fileName = opened.name;
  sess.sourceText = `File: ${opened.name}`;
  const el = opened.el;
  const update = () => {
    if (sess.audioEl !== el || sess.ended) return;
    const done = el.ended;
    ui.sourceLine.hidden = false;
    ui.sourceLine.textContent = done
      ? `File: ${opened.name} finished. The avatar idles; play another file or stop.`
      : `File: ${opened.name} · ${formatTime(el.currentTime)} / ${formatTime(el.duration)}`;
  };
  el.addEventListener('timeupdate', update);
  el.addEventListener('ended', update);
  sess.updateSourceLine = update;
}

/** List the chosen codec first in the offer too (the server is asked by video_codec as well). */
function preferVideoCodec(transceiver, codec) {
  if (!codec || typeof transceiver.setCodecPreferences !== 'function') return;
  try {
    const caps = RTCRtpReceiver.getCapabilities?.('video')?.codecs || [];
    const want = `video/${codec}`.toLowerCase();
    const first = caps.filter((c) => c.mimeType.toLowerCase() === want);
    if (first.length) {
      transceiver.setCodecPreferences(first.concat(caps.filter((c) => !first.includes(c))));
    }
  } catch {
    /* keep the browser's order */
  }
}

function waitForIceGathering(pc, capMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onState);
      pc.removeEventListener('icecandidate', onCandidate);
      resolve();
    };
    const onState = () => {
      if (pc.iceGatheringState === 'complete') done();
    };
    const onCandidate = (ev) => {
      if (!ev.candidate) done();
    };
    const timer = setTimeout(done, capMs);
    pc.addEventListener('icegatheringstatechange', onState);
    pc.addEventListener('icecandidate', onCandidate);
  });
}

function playVideo() {
  const v = ui.video;
  v.muted = false;
  ui.unmute.hidden = true;
  const p = v.play();
  if (p && p.catch) {
    p.catch((err) => {
      if (err.name !== 'NotAllowedError') return; // AbortError etc: a new srcObject, fine
      // Autoplay with sound refused (no user gesture): play muted and offer to unmute.
      v.muted = true;
      ui.unmute.hidden = false;
      v.play().catch(() => {});
    });
  }
}

function waitForPlaying(sess, timeoutMs) {
  const v = ui.video;
  return new Promise((resolve, reject) => {
    const check = () => {
      if (sess.ended) {
        finish();
        reject(new DOMException('The session was stopped.', 'AbortError'));
      } else if (!v.paused && v.readyState >= 2 && v.videoWidth > 0) {
        finish();
        resolve();
      }
    };
    const timer = setTimeout(() => {
      finish();
      reject(new Error(`No video arrived from the server within ${Math.round(timeoutMs / 1000)} s.`));
    }, timeoutMs);
    const poll = setInterval(check, 100);
    const events = ['playing', 'resize', 'loadeddata'];
    const finish = () => {
      clearTimeout(timer);
      clearInterval(poll);
      events.forEach((e) => v.removeEventListener(e, check));
    };
    events.forEach((e) => v.addEventListener(e, check));
    sess.failed.catch((err) => {
      finish();
      reject(err);
    });
  });
}

/** Fail a session: while connecting, start() reports it; once live, tear down and show it. */
function failSession(sess, message) {
  if (sess.ended) return;
  const err = new Error(message);
  sess.fail(err);
  if (sess === session && state === 'live') {
    session = null;
    teardown(sess, { remote: true });
    showBanner('The session stopped', message);
    setState('error');
  }
}

/** The server closed the session (assistant ended, DELETE from elsewhere). */
function sessionEnded(sess, message) {
  if (sess.ended || sess !== session) return;
  if (state !== 'live') {
    failSession(sess, message);
    return;
  }
  session = null;
  teardown(sess, { remote: false });
  showBanner('Session ended', message, 'info');
  setState('idle');
}

async function start(opts = {}) {
  const source = opts.source || (viewerSessionId ? 'whep' : 'mic');
  if (!['mic', 'file', 'whep'].includes(source)) throw new Error(`unknown source ${source}`);
  if (source === 'whep' && !(opts.sessionId || viewerSessionId)) {
    throw new Error('source "whep" needs a session id (?session=<id> or opts.sessionId)');
  }
  if (session) await stop();

  const sess = newSession(source);
  session = sess;
  hideBanner();
  resetStats();
  // Play right away, inside the user's click, so the browser allows sound later.
  ui.video.srcObject = sess.remoteStream;
  playVideo();
  setState('connecting');
  ui.sourceLine.hidden = true;

  try {
    await ready;
    let track = null;
    if (source === 'mic') {
      track = await openMic(sess);
    } else if (source === 'file') {
      if (!opts.file && !opts.url) throw new Error('source "file" needs opts.file or opts.url');
      const opened = await openFile(sess, opts);
      attachFile(sess, opened);
      sess.localStream = opened.stream;
      track = opened.track;
    }
    if (sess.ended) throw new DOMException('The session was stopped.', 'AbortError');

    const pc = new RTCPeerConnection({ iceServers: iceServers(config.ice_servers) });
    sess.pc = pc;
    const codec = source === 'whep' ? null : opts.videoCodec || ui.codec.value || null;
    if (track) {
      sess.audioTransceiver = pc.addTransceiver(track, {
        direction: 'sendrecv',
        streams: [sess.localStream],
      });
      preferVideoCodec(pc.addTransceiver('video', { direction: 'recvonly' }), codec);
    } else {
      pc.addTransceiver('video', { direction: 'recvonly' });
      pc.addTransceiver('audio', { direction: 'recvonly' });
    }
    pc.addEventListener('track', (ev) => {
      sess.remoteStream.addTrack(ev.track);
      ev.track.addEventListener('ended', () => {
        if (sess.remoteStream.getTracks().every((t) => t.readyState === 'ended')) {
          sessionEnded(sess, 'The server ended the stream.');
        }
      });
    });
    pc.addEventListener('connectionstatechange', () => {
      if (pc.connectionState === 'failed') {
        failSession(sess, 'The network connection to the server failed.');
      }
      if (sess === session && state === 'live') {
        ui.statusText.textContent = pc.connectionState === 'disconnected' ? 'Reconnecting…' : STATUS_TEXT.live;
      }
    });

    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    await waitForIceGathering(pc, ICE_GATHER_CAP_MS);
    if (sess.ended) throw new DOMException('The session was stopped.', 'AbortError');

    let url;
    const want = currentEmotion();
    if (source === 'whep') {
      sess.id = opts.sessionId || viewerSessionId;
      url = `/sessions/${encodeURIComponent(sess.id)}/whep`;
    } else {
      const q = new URLSearchParams({
        emotion: want.emotion,
        intensity: String(want.intensity),
        avatar: opts.avatar || selectedAvatar,
      });
      if (codec) q.set('video_codec', codec);
      url = `/whip?${q}`;
    }
    const resp = await request(
      url,
      { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp },
      source === 'whep' ? 'Joining the session' : 'Starting the session',
    );
    const loc = resp.headers.get('Location');
    if (loc) {
      sess.location = new URL(loc, location.href).href;
      const m = /\/sessions\/([^/?#]+)/.exec(loc);
      if (m && source !== 'whep') sess.id = decodeURIComponent(m[1]);
    }
    if (sess.ended) {
      // Stopped while the server was answering: end what it just opened.
      if (sess.location) fetch(sess.location, { method: 'DELETE' }).catch(() => {});
      throw new DOMException('The session was stopped.', 'AbortError');
    }
    if (!sess.id) throw new Error('The server answered without a session Location header.');
    lastSessionId = sess.id;
    ui.sessionId.textContent = sess.id;
    sess.sentEmotion = source === 'whep' ? null : want;
    const answer = await resp.text();
    if (sess.ended) throw new DOMException('The session was stopped.', 'AbortError');
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });

    startSessionPolling(sess);
    startStats(sess);
    startFrameCounter(sess);
    await waitForPlaying(sess, opts.timeoutMs ?? PLAY_TIMEOUT_MS);
    if (sess.ended) throw new DOMException('The session was stopped.', 'AbortError');

    setState('live');
    if (sess.audioEl) {
      sess.audioEl.play().catch((err) => {
        failSession(sess, `The audio file could not be played: ${err.message}`);
      });
    }
    if (sess.updateSourceLine) sess.updateSourceLine();
    else if (sess.sourceText) {
      ui.sourceLine.hidden = false;
      ui.sourceLine.textContent = sess.sourceText;
    }
    // The emotion may have changed while connecting.
    const now = currentEmotion();
    if (source !== 'whep' && (now.emotion !== want.emotion || now.intensity !== want.intensity)) {
      sendEmotion();
    }
    return { sessionId: sess.id };
  } catch (err) {
    if (sess === session) {
      session = null;
      await teardown(sess, { remote: true });
      if (err.name === 'AbortError') {
        setState('idle');
      } else {
        showBanner(source === 'whep' ? 'Could not watch the session' : 'Could not start', err.message);
        setState('error');
      }
    }
    throw err;
  }
}

/** Swap the audio source of a live session for a new file (same session). */
async function playFileLive(file) {
  const sess = session;
  if (!sess || state !== 'live' || !sess.audioTransceiver) return start({ source: 'file', file });
  const oldUrl = sess.objectUrl;
  try {
    const opened = await openFile(sess, { file }); // sets sess.objectUrl to the new file's
    if (sess.ended) return undefined;
    await sess.audioTransceiver.sender.replaceTrack(opened.track);
    if (sess.source === 'mic') sess.localStream?.getTracks().forEach((t) => t.stop());
    if (oldUrl && oldUrl !== sess.objectUrl) URL.revokeObjectURL(oldUrl);
    sess.localStream = opened.stream;
    sess.source = 'file';
    attachFile(sess, opened);
    await opened.el.play();
    sess.updateSourceLine();
  } catch (err) {
    showBanner('Could not play the file', err.message);
  }
  return undefined;
}

async function teardown(sess, { remote = true } = {}) {
  sess.ended = true;
  sess.timers.forEach((t) => clearInterval(t));
  sess.timers = [];
  if (sess.rvfc != null && ui.video.cancelVideoFrameCallback) {
    ui.video.cancelVideoFrameCallback(sess.rvfc);
  }
  sess.rvfc = null;
  const del = remote && sess.location
    ? Promise.race([fetch(sess.location, { method: 'DELETE' }).catch(() => {}), sleep(1500)])
    : Promise.resolve();
  try {
    sess.pc?.close();
  } catch {
    /* already closed */
  }
  sess.localStream?.getTracks().forEach((t) => t.stop());
  if (sess.audioEl) {
    sess.audioEl.pause();
    sess.audioEl.removeAttribute('src');
    sess.audioEl.load();
  }
  if (sess.objectUrl) URL.revokeObjectURL(sess.objectUrl);
  sess.audioCtx?.close().catch(() => {});
  sess.remoteStream.getTracks().forEach((t) => t.stop());
  if (ui.video.srcObject === sess.remoteStream) {
    ui.video.srcObject = null;
    ui.unmute.hidden = true;
  }
  ui.sourceLine.hidden = true;
  ui.sessionState.textContent = '';
  ui.sessionState.dataset.state = '';
  await del;
}

async function stop() {
  const sess = session;
  session = null;
  if (sess) await teardown(sess, { remote: true });
  hideBanner();
  setState('idle');
}

// ---------------------------------------------------------------------------------------------
// Session state from the server

function startSessionPolling(sess) {
  const id = sess.id;
  const poll = async () => {
    if (sess.ended) return;
    try {
      const resp = await fetch(`/sessions/${encodeURIComponent(id)}`);
      if (sess.ended) return;
      if (resp.status === 404) {
        sessionEnded(sess, `Session ${id} no longer exists on the server.`);
        return;
      }
      if (!resp.ok) return;
      const info = await resp.json();
      sess.info = info;
      if (typeof info.playout_delay_ms === 'number') {
        stats.avatarDelay = info.playout_delay_ms;
        renderStats();
      }
      ui.sessionJson.textContent = JSON.stringify(info, null, 2);
      const st = info.state ?? '';
      ui.sessionState.textContent = st;
      ui.sessionState.dataset.state = st;
      if (st === 'closed') sessionEnded(sess, `Session ${id} was closed on the server.`);
    } catch {
      /* transient: the next poll tries again */
    }
  };
  poll();
  sess.timers.push(setInterval(poll, 2000));
}

// ---------------------------------------------------------------------------------------------
// Live stats: getStats() every second, requestVideoFrameCallback for rendered frames

const STAT_FORMAT = {
  fps: formatFps,
  renderedFps: (v) => (v === null ? 'n/a' : formatFps(v)), // null: no requestVideoFrameCallback
  bitrate: formatBitrate,
  rtt: formatMs,
  jitterBuffer: formatMs,
  framesDropped: (v) => (v == null ? '–' : String(v)),
  packetsLost: (v) => (v == null ? '–' : String(v)),
  displayDelay: formatMs,
  avatarDelay: formatMs,
  video: (v) => `Received video: ${v || '–'}`,
};

function resetStats() {
  for (const k of Object.keys(stats)) delete stats[k];
  renderStats();
}

function renderStats() {
  document.querySelectorAll('[data-stat]').forEach((dd) => {
    const key = dd.dataset.stat;
    const fmt = STAT_FORMAT[key] || String;
    dd.textContent = fmt(stats[key]);
  });
  const warn = (id, bad) => $(id).classList.toggle('warn', Boolean(bad));
  warn('stat-dropped', stats.framesDroppedDelta > 0);
  warn('stat-lost', stats.packetsLostDelta > 0);
  warn('stat-rtt', stats.rtt > 300);
}

function startFrameCounter(sess) {
  const v = ui.video;
  if (typeof v.requestVideoFrameCallback !== 'function') {
    stats.renderedFps = null; // not supported by this browser
    return;
  }
  const onFrame = (now, meta) => {
    if (sess.ended) return;
    sess.frames.count += 1;
    if (meta && typeof meta.presentedFrames === 'number') sess.frames.presented = meta.presentedFrames;
    if (meta && meta.receiveTime && meta.expectedDisplayTime) {
      sess.frames.delays.push(meta.expectedDisplayTime - meta.receiveTime);
    }
    sess.rvfc = v.requestVideoFrameCallback(onFrame);
  };
  sess.rvfc = v.requestVideoFrameCallback(onFrame);
}

function startStats(sess) {
  sess.prev = null;
  const tick = async () => {
    if (sess.ended || !sess.pc) return;
    let report;
    try {
      report = await sess.pc.getStats();
    } catch {
      return;
    }
    if (sess.ended) return;
    collectStats(sess, report);
    renderStats();
  };
  sess.timers.push(setInterval(tick, 1000));
}

function collectStats(sess, report) {
  let video = null;
  let audio = null;
  let transport = null;
  let remoteAudio = null;
  const pairs = [];
  report.forEach((s) => {
    const kind = s.kind || s.mediaType;
    if (s.type === 'inbound-rtp' && !s.isRemote) {
      if (kind === 'video') video = s;
      else if (kind === 'audio') audio = s;
    } else if (s.type === 'transport') transport = s;
    else if (s.type === 'candidate-pair') pairs.push(s);
    else if (s.type === 'remote-inbound-rtp' && kind === 'audio') remoteAudio = s;
  });
  const now = performance.now();
  const prev = sess.prev;
  const dt = prev ? (now - prev.t) / 1000 : 0;
  const cur = {
    t: now,
    framesDecoded: video?.framesDecoded ?? 0,
    bytes: (video?.bytesReceived ?? 0) + (audio?.bytesReceived ?? 0),
    videoBytes: video?.bytesReceived ?? 0,
    jbDelay: video?.jitterBufferDelay ?? 0,
    jbCount: video?.jitterBufferEmittedCount ?? 0,
    framesDropped: video?.framesDropped ?? 0,
    packetsLost: (video?.packetsLost ?? 0) + (audio?.packetsLost ?? 0),
    rendered: sess.frames.count,
    presented: sess.frames.presented,
  };

  if (video && typeof video.framesPerSecond === 'number') stats.fps = video.framesPerSecond;
  else if (prev && dt > 0) stats.fps = (cur.framesDecoded - prev.framesDecoded) / dt;
  else if (video) stats.fps = 0;

  if (prev && dt > 0) {
    stats.bitrate = ((cur.bytes - prev.bytes) * 8) / dt;
    stats.videoBitrate = ((cur.videoBytes - prev.videoBytes) * 8) / dt;
    if (stats.renderedFps !== null) {
      const frames = cur.presented != null && prev.presented != null
        ? cur.presented - prev.presented
        : cur.rendered - prev.rendered;
      stats.renderedFps = Math.max(0, frames) / dt;
    }
    stats.framesDroppedDelta = cur.framesDropped - prev.framesDropped;
    stats.packetsLostDelta = cur.packetsLost - prev.packetsLost;
  }
  if (cur.jbCount > 0) {
    const dCount = prev ? cur.jbCount - prev.jbCount : 0;
    stats.jitterBuffer = dCount > 0
      ? ((cur.jbDelay - prev.jbDelay) / dCount) * 1000
      : (cur.jbDelay / cur.jbCount) * 1000;
  }
  if (video) {
    stats.framesDropped = cur.framesDropped;
    stats.framesDecoded = cur.framesDecoded;
    stats.framesReceived = video.framesReceived ?? null;
  }
  stats.packetsLost = cur.packetsLost;

  let pair = transport?.selectedCandidatePairId ? report.get(transport.selectedCandidatePairId) : null;
  pair = pair || pairs.find((p) => p.selected) || pairs.find((p) => p.nominated && p.state === 'succeeded');
  if (pair && typeof pair.currentRoundTripTime === 'number') stats.rtt = pair.currentRoundTripTime * 1000;
  else if (remoteAudio && typeof remoteAudio.roundTripTime === 'number') stats.rtt = remoteAudio.roundTripTime * 1000;

  if (sess.frames.delays.length) {
    const d = sess.frames.delays;
    stats.displayDelay = d.reduce((a, b) => a + b, 0) / d.length;
    sess.frames.delays = [];
  }
  if (video) {
    const codec = video.codecId ? report.get(video.codecId) : null;
    const w = video.frameWidth || ui.video.videoWidth;
    const h = video.frameHeight || ui.video.videoHeight;
    const name = codec?.mimeType ? codec.mimeType.replace(/^video\//i, '') : '';
    stats.width = w || null;
    stats.height = h || null;
    stats.codec = name || null;
    stats.video = [w && h ? `${w}×${h}` : '', name].filter(Boolean).join(' ');
  }
  stats.timestamp = Date.now();
  sess.prev = cur;
}

// ---------------------------------------------------------------------------------------------
// Wiring

function wire() {
  ui.start.addEventListener('click', () => {
    start({ source: viewerSessionId ? 'whep' : 'mic' }).catch(() => {});
  });
  ui.stop.addEventListener('click', () => {
    stop();
  });
  ui.audioFile.addEventListener('change', () => {
    const file = ui.audioFile.files?.[0];
    ui.audioFile.value = '';
    if (!file) return;
    if (state === 'live' && session && session.source !== 'whep') playFileLive(file);
    else start({ source: 'file', file }).catch(() => {});
  });
  ui.unmute.addEventListener('click', () => {
    ui.video.muted = false;
    ui.unmute.hidden = true;
    ui.video.play().catch(() => {});
  });
  ui.errorClose.addEventListener('click', hideBanner);

  ui.emotion.addEventListener('change', () => sendEmotion());
  ui.intensity.addEventListener('input', () => {
    ui.intensityValue.textContent = ui.intensity.value;
  });
  ui.intensity.addEventListener('change', () => {
    ui.intensityValue.textContent = ui.intensity.value;
    sendEmotion();
  });

  ui.upload.addEventListener('change', () => {
    const file = ui.upload.files?.[0];
    ui.upload.value = '';
    onPortraitFile(file);
  });
  const dz = ui.dropzone;
  ['dragenter', 'dragover'].forEach((type) => dz.addEventListener(type, (ev) => {
    ev.preventDefault();
    if (ev.dataTransfer) ev.dataTransfer.dropEffect = 'copy';
    dz.classList.add('dragging');
  }));
  ['dragleave', 'dragend'].forEach((type) => dz.addEventListener(type, (ev) => {
    if (ev.target === dz || !dz.contains(ev.relatedTarget)) dz.classList.remove('dragging');
  }));
  dz.addEventListener('drop', (ev) => {
    ev.preventDefault();
    dz.classList.remove('dragging');
    onPortraitFile(ev.dataTransfer?.files?.[0]);
  });
  // A file dropped elsewhere must not navigate away from a live session.
  window.addEventListener('dragover', (ev) => ev.preventDefault());
  window.addEventListener('drop', (ev) => ev.preventDefault());

  window.addEventListener('pagehide', () => {
    if (session?.location) {
      fetch(session.location, { method: 'DELETE', keepalive: true }).catch(() => {});
    }
  });
}

function applyViewerMode() {
  if (!viewerSessionId) return;
  document.body.classList.add('viewer');
  ui.startLabel.textContent = 'Watch session';
  const icon = ui.start.querySelector('svg');
  if (icon) icon.innerHTML = '<path d="M8 5v14l11-7z"/>'; // play
  ui.tagline.textContent = `Watching session ${viewerSessionId} (WHEP viewer).`;
  ui.audioFileLabel.hidden = true;
  ui.avatarPanel.hidden = true;
  ui.sessionId.textContent = viewerSessionId;
}

async function init() {
  wire();
  applyViewerMode();
  renderStats();
  setState('idle');
  ui.start.disabled = true;
  try {
    await loadConfig();
  } catch (err) {
    showBanner('Could not load the configuration', `${err.message} Using defaults.`);
  }
  renderControls();
  if (!viewerSessionId) {
    try {
      await loadAvatars();
    } catch (err) {
      showBanner('Could not load the portraits', err.message);
    }
  }
  if (state === 'idle' || state === 'error') {
    ui.start.disabled = false;
  }
  document.body.dataset.ready = 'true';
}

const ready = init();

window.dreamtalk = {
  /** start({source: 'mic' | 'file' | 'whep', file?, url?, sessionId?, avatar?, videoCodec?, timeoutMs?}) */
  start,
  stop,
  get state() {
    return state;
  },
  get sessionId() {
    return session?.id ?? null;
  },
  get lastSessionId() {
    return lastSessionId;
  },
  stats,
  get config() {
    return config;
  },
  get avatar() {
    return selectedAvatar;
  },
  get avatars() {
    return avatars;
  },
  selectAvatar,
  setEmotion,
  upload: uploadPortrait,
  ready,
};
