"""Decode a LeRobot dataset's frames as LeRobot's pyav fallback does.

Reads the JSON report of check.mjs on stdin. For every (video file,
episode) it requires, as lerobot.datasets.video_utils.decode_video_frames
does, a decoded frame within tolerance_s (1e-4 s) of each query timestamp
(from_timestamp + row timestamp), plus what the loader assumes: one video
stream, progressive MP4 (a moov box, no moof), first pts 0, frame count ==
rows, and every episode starting on a keyframe. Prints a JSON summary; exit
1 on any failure.
"""
import json
import struct
import sys

import av

TOL = 1e-4


def top_boxes(path):
    names = []
    with open(path, "rb") as f:
        while True:
            h = f.read(8)
            if len(h) < 8:
                break
            size, name = struct.unpack(">I4s", h)
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0]
                f.seek(size - 16, 1)
            elif size == 0:
                break
            else:
                f.seek(size - 8, 1)
            names.append(name.decode("latin1"))
    return names


def main():
    rep = json.load(sys.stdin)
    problems = []
    byfile = {}
    for v in rep["videos"]:
        byfile.setdefault(v["file"], []).append(v)
    checked = 0
    worst = 0.0
    for path, eps in sorted(byfile.items()):
        boxes = top_boxes(path)
        if "moov" not in boxes or "moof" in boxes:
            problems.append(f"{path}: top-level boxes {boxes}: not a progressive MP4")
        c = av.open(path)
        if len(c.streams.video) != 1 or len(c.streams.audio) != 0:
            problems.append(f"{path}: {len(c.streams.video)} video and {len(c.streams.audio)} audio streams")
        s = c.streams.video[0]
        frames = [(float(f.pts * s.time_base), f.key_frame) for f in c.decode(s)]
        c.close()
        pts = [p for p, _ in frames]
        if pts and abs(pts[0]) > TOL:
            problems.append(f"{path}: first pts {pts[0]}")
        total = sum(len(e["queries"]) for e in eps)
        if len(pts) != total:
            problems.append(f"{path}: {len(pts)} frames, episodes have {total} rows")
        for e in eps:
            q = e["queries"]
            if not q:
                continue
            # LeRobot starts every episode on a keyframe.
            first = min(range(len(pts)), key=lambda i: abs(pts[i] - q[0])) if pts else None
            if first is not None and not frames[first][1]:
                problems.append(f"{path}: episode {e['episode']} does not start on a keyframe")
            j = 0
            for ts in q:
                while j + 1 < len(pts) and abs(pts[j + 1] - ts) <= abs(pts[j] - ts):
                    j += 1
                d = abs(pts[j] - ts) if pts else float("inf")
                worst = max(worst, d)
                if d > TOL:
                    problems.append(f"{path}: episode {e['episode']}: query {ts:.6f}s, nearest frame {pts[j]:.6f}s (FrameTimestampError)")
                    break
                checked += 1
    out = {"ok": not problems, "problems": problems[:50], "files": len(byfile), "queries": checked, "worst_s": worst,
           "pyav": av.__version__}
    print(json.dumps(out))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
