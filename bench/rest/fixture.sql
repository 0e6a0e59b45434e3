-- Benchmark data: 1,000 authors, 10,000 books.
drop table if exists public.bench_books, public.bench_authors cascade;
create table public.bench_authors (id int primary key, name text not null);
create table public.bench_books (
  id serial primary key,
  author_id int not null references public.bench_authors(id),
  title text not null,
  pages int not null
);
create index on public.bench_books (author_id);
create index on public.bench_books (pages);
insert into public.bench_authors select i, 'author ' || i from generate_series(1, 1000) i;
insert into public.bench_books (author_id, title, pages)
  select 1 + (i % 1000), 'book ' || i, 50 + (i * 7919) % 900 from generate_series(1, 10000) i;
select setval(pg_get_serial_sequence('public.bench_books', 'id'), 10000);
grant all on public.bench_authors, public.bench_books to anon;
grant all on all sequences in schema public to anon;
analyze public.bench_authors, public.bench_books;
notify pgrst, 'reload schema';
