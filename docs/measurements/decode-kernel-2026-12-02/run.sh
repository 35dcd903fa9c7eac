#!/bin/bash
M=~/.cache/squat/models/SmolLM2-135M-Instruct.Q4_1.gguf
pkill -STOP -f 'meas-bin/squat eval'
trap 'pkill -CONT -f "meas-bin/squat eval"' EXIT
sleep 3; echo "start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in 1 2 3; do
  for ctx in 8192 16384; do
    for spec in /tmp/squat-new3:f16 /tmp/squat-new3:squat-2 /tmp/squat-head:squat-2; do
      bin=${spec%%:*}; kv=${spec##*:}
      line=$($bin bench -m $M -t 2 -c $((ctx+256)) --kv $kv --ctx $ctx --gen 128 --repeats 1 2>&1 | grep -E "^ +$kv +[0-9]+ " | tail -1)
      echo "round $r $(basename $bin) $line | load $(cut -d' ' -f1 /proc/loadavg)"
    done
  done
done
echo "end $(date -u +%H:%M:%S)"
