package sim

import (
	"bytes"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/description"
	"github.com/bluenviron/gortsplib/v4/pkg/format"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"

	"github.com/episoded/episoded/assets"

	"github.com/episoded/episoded/internal/video"
)

// gotPacket is one RTP packet as a client received it.
type gotPacket struct {
	pkt   *rtp.Packet
	recvT int64
	srcT  int64 // corrected PacketNTP, 0 before the first sender report
}

// session is what one client play session saw.
type session struct {
	pkts    []gotPacket
	srs     int
	lost    uint64 // packets gortsplib reported lost
	err     error  // what ended it (nil: we closed it)
	forma   *format.H264
	firstSR int // index of the first packet with NTP time, -1 if none
}

// gortsplibNTP decodes a sender report's NTP time the way gortsplib
// v4.16.2 does (low 32 bits as ns, issue bluenviron/gortsplib#869).
func gortsplibNTP(v uint64) int64 {
	return int64((v>>32)*1e9+(v&0xFFFFFFFF)) - video.NTPEpochOffset*1e9
}

// play reads url over TCP until d has passed or the session fails.
func play(t *testing.T, url string, d time.Duration) (*session, error) {
	t.Helper()
	u, err := base.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	tcp := gortsplib.TransportTCP
	var mu sync.Mutex
	ses := &session{firstSR: -1}
	c := &gortsplib.Client{Scheme: u.Scheme, Host: u.Host, Transport: &tcp, OnPacketsLost: func(n uint64) {
		mu.Lock()
		ses.lost += n
		mu.Unlock()
	}}
	if err := c.Start2(); err != nil {
		return nil, err
	}
	defer c.Close()
	desc, _, err := c.Describe(u)
	if err != nil {
		return nil, err
	}
	var forma *format.H264
	medi := desc.FindFormat(&forma)
	if medi == nil {
		t.Fatalf("%s: no H.264 format in %v", url, desc.Medias)
	}
	if err := c.SetupAll(desc.BaseURL, desc.Medias); err != nil {
		return nil, err
	}
	ses.forma = forma
	var lastSR *rtcp.SenderReport
	c.OnPacketRTCPAny(func(_ *description.Media, p rtcp.Packet) {
		if sr, ok := p.(*rtcp.SenderReport); ok {
			mu.Lock()
			lastSR = sr
			ses.srs++
			mu.Unlock()
		}
	})
	c.OnPacketRTPAny(func(m *description.Media, _ format.Format, p *rtp.Packet) {
		now := time.Now().UnixNano()
		g := gotPacket{pkt: p, recvT: now}
		mu.Lock()
		defer mu.Unlock()
		if ntp, ok := c.PacketNTP(m, p); ok && lastSR != nil {
			// PacketNTP = decode(SR.NTP) + (ts − SR.RTP)/90kHz; swap in
			// the RFC 3550 decoding of SR.NTP.
			g.srcT = ntp.UnixNano() - gortsplibNTP(lastSR.NTPTime) + video.NTPToUnixNano(lastSR.NTPTime)
			if ses.firstSR < 0 {
				ses.firstSR = len(ses.pkts)
			}
		}
		ses.pkts = append(ses.pkts, g)
	})
	if _, err := c.Play(nil); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case err := <-done:
		mu.Lock()
		ses.err = err
		mu.Unlock()
	case <-time.After(d):
	}
	c.Close()
	mu.Lock()
	defer mu.Unlock()
	return ses, nil
}

// frameGroup is the packets of one RTP timestamp, in arrival order.
type frameGroup struct {
	ts    uint32
	pkts  []gotPacket
	au    [][]byte // nil if it does not decode
	clip  int      // index in the clip, -1 if not identical to any
	srcT  int64
	recvT int64 // arrival of its last packet
}

func (s *session) frames(t *testing.T, clip [][][]byte) []frameGroup {
	t.Helper()
	var out []frameGroup
	for _, p := range s.pkts {
		if len(out) == 0 || out[len(out)-1].ts != p.pkt.Timestamp {
			out = append(out, frameGroup{ts: p.pkt.Timestamp, clip: -1})
		}
		f := &out[len(out)-1]
		f.pkts = append(f.pkts, p)
		f.srcT, f.recvT = p.srcT, p.recvT
	}
	for i := range out {
		f := &out[i]
		dec, err := s.forma.CreateDecoder()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.pkts {
			au, err := dec.Decode(p.pkt)
			if err == nil {
				f.au = au
			}
		}
		for j, want := range clip {
			if sameAU(f.au, want) {
				f.clip = j
				break
			}
		}
	}
	return out
}

func sameAU(a, b [][]byte) bool {
	return len(a) == len(b) && slices.EqualFunc(a, b, bytes.Equal)
}

func TestCameraPlaysClipOnCameraClock(t *testing.T) {
	clock := Clock{Offset: 1500 * time.Millisecond, DriftPPB: PPM(50)}
	s := startSim(t, Options{
		Cameras: 2, Clocks: map[string]Clock{"cam1": clock},
		Jitter: 2 * time.Millisecond, Seed: 7, TriggerPeriod: -1,
	})
	clip, err := assets.H264AccessUnits()
	if err != nil {
		t.Fatal(err)
	}
	// 5 s: the sim has just started, so this crosses the 4 s clip's loop
	// boundary.
	ses, err := play(t, s.CameraURLs()[0], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ses.err != nil {
		t.Fatalf("session ended early: %v", ses.err)
	}
	frames := ses.frames(t, clip)
	if len(frames) < 120 {
		t.Fatalf("got %d frames in 5 s, want at least 120", len(frames))
	}
	// Packets: no sequence gaps.
	for i := 1; i < len(ses.pkts); i++ {
		if d := ses.pkts[i].pkt.SequenceNumber - ses.pkts[i-1].pkt.SequenceNumber; d != 1 {
			t.Fatalf("packet %d: sequence jumps by %d", i, d)
		}
	}
	// Frames: identical to the clip, in order modulo the loop, RTP time
	// +3000 per frame (uint32 arithmetic, so wrap-around is fine). The
	// first and last groups may be partial (PLAY or Close mid-frame):
	// skip them.
	frames = frames[1 : len(frames)-1]
	first := frames[0].clip
	if first < 0 {
		t.Fatal("first whole frame is not a clip frame")
	}
	wrapped := false
	for i, f := range frames {
		want := (first + i) % len(clip)
		if f.clip != want {
			t.Fatalf("frame %d (ts %d): clip frame %d, want %d", i, f.ts, f.clip, want)
		}
		if i > 0 {
			if d := f.ts - frames[i-1].ts; d != ticksPerFrame {
				t.Fatalf("frame %d: RTP time steps by %d, want %d", i, d, ticksPerFrame)
			}
			if want == 0 {
				wrapped = true
			}
		}
	}
	if !wrapped {
		t.Fatal("never crossed the clip's loop boundary")
	}
	// Sender reports: one at once after PLAY (within the burst), then
	// every second.
	if ses.firstSR < 0 || ses.firstSR > 3*20 {
		t.Fatalf("first packet with NTP time: %d (no early sender report)", ses.firstSR)
	}
	if ses.srs < 4 {
		t.Errorf("%d sender reports in 5 s, want at least 4", ses.srs)
	}
	// NTP time is the camera clock: Truth finds each frame, and the true
	// time maps back through the configured offset and drift.
	t0 := s.T0()
	checked := 0
	for i, f := range frames {
		if f.srcT == 0 {
			continue
		}
		trueT, ok := s.Truth("cell1/cam1", f.srcT)
		if !ok {
			t.Fatalf("frame %d: no truth for SrcT %d", i, f.srcT)
		}
		if d := bigAt(trueT, t0, int64(clock.Offset), clock.DriftPPB) - f.srcT; d < -3 || d > 3 {
			t.Fatalf("frame %d: d(trueT) − SrcT = %d ns", i, d)
		}
		if trueT > f.recvT {
			t.Fatalf("frame %d arrived %v before its capture", i, time.Duration(trueT-f.recvT))
		}
		if i > 0 && frames[i-1].srcT != 0 {
			if d := f.srcT - frames[i-1].srcT; d < 33333333-2 || d > 33333334+2 {
				t.Fatalf("frame %d: SrcT steps by %d ns", i, d)
			}
		}
		if alias, ok := s.Truth("cam1", f.srcT); !ok || alias != trueT {
			t.Fatalf("Truth by device id differs")
		}
		checked++
	}
	if checked < 100 {
		t.Fatalf("only %d frames had NTP time", checked)
	}
	if _, ok := s.Truth("cell1/cam1", frames[len(frames)-1].srcT+int64(5*time.Millisecond)); ok {
		t.Error("Truth accepted a time 5 ms off any frame")
	}
	st, _ := s.Stats("cell1/cam1")
	if st.Sent < uint64(len(frames)) || st.PacketsDropped != 0 || st.OutageFrames != 0 || st.SenderReports < 4 {
		t.Errorf("stats %+v", st)
	}

	// cam2 is served too, with the clip's parameter sets in its SDP.
	ses2, err := play(t, s.CameraURLs()[1], 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if sps, _ := paramSets(clip); !bytes.Equal(ses2.forma.SPS, sps) {
		t.Error("cam2: SDP lacks the clip's SPS")
	}
	if len(ses2.pkts) == 0 {
		t.Error("cam2: no packets")
	}
	// An unknown path is refused.
	if _, err := play(t, "rtsp://"+s.RTSPAddr()+"/cam9", time.Second); err == nil {
		t.Error("cam9: no error")
	}
}

// unwrap returns seq as a position relative to base, for ranges shorter
// than 32768 packets.
func unwrap(base, seq uint16) int { return int(int16(seq - base)) }

// checkLoss compares what a session saw missing with what the sim says it
// dropped, for the packets and frames strictly inside the session.
func checkLoss(t *testing.T, name string, ses *session, frames []frameGroup, drops []Loss, clipLen int) (lostPkts, hitFrames int) {
	t.Helper()
	if len(ses.pkts) < 2 || len(frames) < 3 {
		t.Fatalf("%s: too few packets (%d) or frames (%d)", name, len(ses.pkts), len(frames))
	}
	base := ses.pkts[0].pkt.SequenceNumber
	last := unwrap(base, ses.pkts[len(ses.pkts)-1].pkt.SequenceNumber)
	got := map[int]bool{}
	for _, p := range ses.pkts {
		got[unwrap(base, p.pkt.SequenceNumber)] = true
	}
	var missing, dropped []int
	for i := 0; i <= last; i++ {
		if !got[i] {
			missing = append(missing, i)
		}
	}
	droppedTS := map[uint32]bool{}
	for _, d := range drops {
		if i := unwrap(base, d.Seq); i > 0 && i < last {
			dropped = append(dropped, i)
		}
		droppedTS[d.RTPTime] = true
	}
	slices.Sort(dropped)
	if !slices.Equal(missing, dropped) {
		t.Fatalf("%s: client missed packets %v, sim dropped %v", name, missing, dropped)
	}
	if ses.lost != uint64(len(missing)) {
		t.Fatalf("%s: gortsplib reported %d packets lost, sequence gaps show %d", name, ses.lost, len(missing))
	}
	// Frames strictly inside: damaged (or wholly missing) on the client
	// exactly when the sim dropped one of their packets.
	firstTS, lastTS := frames[0].ts, frames[len(frames)-1].ts
	seen := map[uint32]frameGroup{}
	for _, f := range frames {
		seen[f.ts] = f
	}
	for ts := firstTS + ticksPerFrame; ts != lastTS; ts += ticksPerFrame {
		f, ok := seen[ts]
		intact := ok && f.clip >= 0
		if intact == droppedTS[ts] {
			t.Fatalf("%s: frame ts %d: intact on client %v, sim dropped packets of it %v", name, ts, intact, droppedTS[ts])
		}
		if !intact {
			hitFrames++
		}
	}
	return len(missing), hitFrames
}

func TestCameraLossAndOutage(t *testing.T) {
	s := startSim(t, Options{
		Cameras: 1, Loss: 0.03, Seed: 3, TriggerPeriod: -1,
		Outages: []Outage{{Camera: "cam1", At: 1500 * time.Millisecond, For: 1500 * time.Millisecond}},
	})
	clip, _ := assets.H264AccessUnits()
	url := s.CameraURLs()[0]

	// Session 1 runs into the outage: the server closes it.
	ses1, err := play(t, url, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ses1.err == nil {
		t.Fatal("session 1 was not ended by the outage")
	}
	t.Logf("session 1 ended: %v", ses1.err)
	// While down, the camera refuses clients; it comes back.
	refused := 0
	var ses2 *session
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ses2, err = play(t, url, 1500*time.Millisecond)
		if err == nil {
			break
		}
		refused++
	}
	if err != nil {
		t.Fatalf("camera never came back: %v", err)
	}
	if refused == 0 {
		t.Error("no client was refused during the outage")
	}
	if ses2.err != nil {
		t.Fatalf("session 2 failed: %v", ses2.err)
	}

	drops := s.Losses("cell1/cam1")
	f1, f2 := ses1.frames(t, clip), ses2.frames(t, clip)
	lost1, hit1 := checkLoss(t, "session 1", ses1, f1, drops, len(clip))
	lost2, hit2 := checkLoss(t, "session 2", ses2, f2, drops, len(clip))
	t.Logf("client saw %d+%d lost packets, %d+%d damaged frames", lost1, lost2, hit1, hit2)
	if lost1+lost2 == 0 {
		t.Error("3% loss but the client saw none")
	}

	st, _ := s.Stats("cell1/cam1")
	if st.Outages != 1 || st.OutageFrames != 45 {
		t.Errorf("outages %d, outage frames %d; want 1 and 45 (1.5 s at 30 fps)", st.Outages, st.OutageFrames)
	}
	if st.PacketsDropped != uint64(len(drops)) {
		t.Errorf("PacketsDropped %d, Losses lists %d", st.PacketsDropped, len(drops))
	}
	distinct := map[uint32]bool{}
	for _, d := range drops {
		distinct[d.RTPTime] = true
	}
	if st.FramesAffected != uint64(len(distinct)) {
		t.Errorf("FramesAffected %d, Losses covers %d frames", st.FramesAffected, len(distinct))
	}
	// The frames between the sessions include the whole outage, and none
	// of them has a truth; every frame the client got does.
	gap := int((f2[0].ts - f1[len(f1)-1].ts) / ticksPerFrame)
	if gap < 46 {
		t.Errorf("RTP gap across the outage is %d frames, want at least 46", gap)
	}
	last1 := f1[len(f1)-1]
	if last1.srcT == 0 {
		t.Fatal("session 1 had no NTP time")
	}
	for _, f := range append(slices.Clone(f1), f2...) {
		if f.srcT == 0 {
			continue
		}
		if _, ok := s.Truth("cell1/cam1", f.srcT); !ok {
			t.Fatalf("frame ts %d: no truth", f.ts)
		}
	}
	inOutage := last1.srcT + mulDivFloor(10, 1e9, 30) // ~10 frames after, inside the 45
	if _, ok := s.Truth("cell1/cam1", inOutage); ok {
		t.Error("Truth returned a frame withheld by the outage")
	}
}

// TestCameraPlaysGivenClip: Options.Clip replaces the embedded clip. Here
// it is the embedded clip's first two GOPs (60 frames), so the stream
// must wrap to frame 0 after frame 59, which the 120-frame default never
// does.
func TestCameraPlaysGivenClip(t *testing.T) {
	all, err := assets.H264AccessUnits()
	if err != nil {
		t.Fatal(err)
	}
	clip := all[:60]
	s := startSim(t, Options{Cameras: 1, Clip: clip, TriggerPeriod: -1})
	ses, err := play(t, s.CameraURLs()[0], 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	frames := ses.frames(t, clip)
	if len(frames) < 70 {
		t.Fatalf("got %d frames in 3 s, want at least 70", len(frames))
	}
	frames = frames[1 : len(frames)-1]
	wraps := 0
	for i, f := range frames {
		if f.clip < 0 {
			t.Fatalf("frame %d is not a frame of the given clip", i)
		}
		if i > 0 && f.clip != (frames[i-1].clip+1)%len(clip) {
			t.Fatalf("frame %d: clip frame %d after %d", i, f.clip, frames[i-1].clip)
		}
		if i > 0 && f.clip == 0 {
			wraps++
		}
	}
	if wraps == 0 {
		t.Fatal("never wrapped after the given clip's 60 frames")
	}
	if _, err := New(Options{Clip: [][][]byte{{{0x65, 0x88}}}}); err == nil || !contains(err.Error(), "clip: 1 access units without an SPS and a PPS") {
		t.Errorf("clip without parameter sets: %v", err)
	}
}
