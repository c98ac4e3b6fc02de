// Package dataset builds LeRobot v3.0 training datasets from episodes
// (`episoded dataset build`; docs/DATASETS.md is the user's guide).
//
// # Pipeline
//
// A Source lists episodes (BucketSource reads uploaded
// manifest.json + episode.mcap, APISource a running daemon's exports).
// Build takes them in (start, id) order and, one at a time: copies the
// MCAP to a temporary file while hashing it and refuses it unless size
// and sha256 match the manifest (ErrTampered, naming the object);
// ReadEpisode keeps the mapped telemetry topics (JSON) and cameras
// (foxglove.CompressedVideo: log time is the decode time, the message
// timestamp the presentation time; frames before a camera's first
// keyframe are skipped and counted); align puts the episode on the fps
// grid and applies the missing-row policy; each camera is remuxed (its
// access units copied into MP4 samples with composition offsets) when its
// frames map one to one onto the rows, else re-encoded by two ffmpeg
// processes with the builder choosing one decoded picture per row.
// Per-episode statistics are computed as the rows are made. Nothing is
// written until every episode has been converted: a failing episode
// (tampered, unreadable, ffmpeg missing when needed) leaves the output
// directory as it was.
//
// # Files and appending
//
// write lays the files out as a pure function of the episode sequence:
// data parquet files hold whole episodes and roll at an estimated 100 MB;
// each camera's MP4 holds whole episodes back to back and rolls when the
// parameter sets change or at 200 MB; the episodes table carries each
// episode's statistics (stats/<feature>/<stat>), from which stats.json is
// aggregated. Appending reads that back (load: the tables, the last data
// file's rows, each camera's last MP4 when it grows) and rewrites the
// metadata tables and the files that grow, so appending episode by
// episode gives the same bytes as building once. Every file is written to a
// temporary name and renamed; a crash mid-write can leave a dataset whose
// tables disagree, which the next build reports when it loads it.
//
// Memory: the values of the mapped telemetry fields of the episode being
// converted, the rows of the data file being filled (finished data files
// are staged in the temporary directory and moved in place last), and one
// small record per video frame. Frame bytes are
// spooled to a file in the build's temporary directory (inside the output
// directory) and MP4 samples are read from their files when written.
package dataset
