-- wrk reporter shared by scripts/loadtest.sh and scripts/chaos.py: prints the results as
-- "key value" lines after wrk's own output, so the scripts can parse them.
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write("-- forkwarden report --\n")
  io.write(string.format("requests %d\n", summary.requests))
  io.write(string.format("duration_us %d\n", summary.duration))
  io.write(string.format("non_2xx %d\n", errors.status))
  io.write(string.format("errors_connect %d\n", errors.connect))
  io.write(string.format("errors_read %d\n", errors.read))
  io.write(string.format("errors_write %d\n", errors.write))
  io.write(string.format("errors_timeout %d\n", errors.timeout))
  for _, p in ipairs({ 50, 90, 99 }) do
    io.write(string.format("latency_p%d_us %d\n", p, latency:percentile(p)))
  end
  io.write(string.format("latency_max_us %d\n", latency.max))
end
