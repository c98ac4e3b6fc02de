// Runs SQL statements with DuckDB and prints the rows of the last one as
// JSON. Usage: node query.mjs 'SQL' ['SQL' ...]
import { DuckDBInstance } from '@duckdb/node-api';

const stmts = process.argv.slice(2);
if (stmts.length === 0) {
  console.error('usage: node query.mjs SQL...');
  process.exit(2);
}
const instance = await DuckDBInstance.create(':memory:');
const conn = await instance.connect();
let rows = [];
for (const sql of stmts) {
  const reader = await conn.runAndReadAll(sql);
  rows = reader.getRowObjectsJson();
}
process.stdout.write(JSON.stringify(rows));
