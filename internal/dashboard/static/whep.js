// whep.js: a WHEP viewer (draft-ietf-wish-whep) without trickle ICE: the
// offer is POSTed once candidate gathering completes, the answer (201) is
// applied, and DELETE on the returned Location ends the session.

import { AuthError, ForbiddenError, HTTPError, authHeaders, pathOf } from './api.js';

const GATHER_TIMEOUT_MS = 3000;

function gatheringComplete(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, GATHER_TIMEOUT_MS); // send what we have
    function done() {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === 'complete') done();
    }
    pc.addEventListener('icegatheringstatechange', check);
  });
}

export class WHEPViewer {
  // stream is the stream id (cell1/cam1); video the <video> element;
  // onState(text) reports the connection state.
  constructor(stream, video, onState) {
    this.stream = stream;
    this.video = video;
    this.onState = onState || (() => {});
    this.pc = null;
    this.location = null;
    this.closed = false;
  }

  async start() {
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addEventListener('track', (ev) => {
      const ms = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
      if (this.video.srcObject !== ms) this.video.srcObject = ms;
      // autoplay covers this; play() also surfaces a refusal.
      this.video.play().catch(() => {});
    });
    pc.addEventListener('connectionstatechange', () => this.onState(pc.connectionState));
    this.onState('gathering');
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc);
    if (this.closed) return;
    this.onState('offering');
    const url = '/whep/' + pathOf(this.stream);
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', ...authHeaders() },
      body: pc.localDescription.sdp,
    });
    if (res.status === 401) throw new AuthError('preview needs the API token');
    if (res.status === 403) throw new ForbiddenError('preview refused (403)');
    if (res.status !== 201) {
      let msg = (await res.text()).trim();
      try {
        msg = JSON.parse(msg).error || msg;
      } catch {
        // plain text
      }
      throw new HTTPError(res.status, `preview ${this.stream}: ${res.status} ${msg}`);
    }
    const loc = res.headers.get('Location');
    if (loc) this.location = new URL(loc, new URL(url, location.href)).pathname;
    const answer = await res.text();
    if (this.closed) {
      this.stop();
      return;
    }
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    this.onState('connecting');
  }

  // stop closes the peer connection and ends the session on the daemon.
  stop() {
    this.closed = true;
    if (this.pc) {
      this.pc.close();
      this.pc = null;
    }
    if (this.location) {
      const loc = this.location;
      this.location = null;
      // keepalive lets the DELETE go out while the page unloads.
      fetch(loc, { method: 'DELETE', headers: authHeaders(), keepalive: true }).catch(() => {});
    }
    this.video.srcObject = null;
  }
}
