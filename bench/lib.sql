-- Benchmark helpers, loaded into each benchmark database.
CREATE SCHEMA IF NOT EXISTS bench;

-- Time each query `reps` times, interleaving the queries round by round so that a noisy moment
-- hits all of them alike; report the median, the per-row cost above the first (baseline) query
-- and the ratio baseline / query (1.0 = as fast as the baseline; higher is better).
CREATE OR REPLACE FUNCTION bench.compare(queries text[], reps int, rows_per_query bigint)
RETURNS TABLE (query text, median_ms numeric, ns_per_row_over_baseline numeric, speed_vs_baseline numeric)
LANGUAGE plpgsql AS $$
DECLARE
    n int := array_length(queries, 1);
    t0 timestamptz;
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS bench_timing (q int, ms float8);
    TRUNCATE bench_timing;
    FOR i IN 1 .. n LOOP EXECUTE queries[i][2]; END LOOP; -- warm-up
    FOR r IN 1 .. reps LOOP
        FOR i IN 1 .. n LOOP
            t0 := clock_timestamp();
            EXECUTE queries[i][2];
            INSERT INTO bench_timing VALUES (i, extract(epoch FROM clock_timestamp() - t0) * 1000);
        END LOOP;
    END LOOP;
    RETURN QUERY
    WITH m AS (
        SELECT q, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS med FROM bench_timing GROUP BY q
    )
    SELECT queries[m.q][1],
           round(m.med::numeric, 2),
           round(((m.med - b.med) * 1e6 / rows_per_query)::numeric, 1),
           round((b.med / m.med)::numeric, 3)
      FROM m, (SELECT med FROM m WHERE q = 1) b
     ORDER BY m.q;
END $$;
